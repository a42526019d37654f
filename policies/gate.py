"""The policy gate: the only code that creates a :class:`~policies.release.Release`.

``evaluate`` runs the pack's rules over the candidates a segment selected:

1. **filter** rules, in pack order, each give a mask of people to exclude (consent,
   suppression lists, minors, PHI authorization). A filter rule of severity ``warn``
   reports but does not exclude. Candidates without a member key (no external id) are
   excluded too: they could never be difference-checked or removed later.
2. per destination, **destination** rules in pack order: health-restricted destinations,
   opaque name, minimum size, difference protection against every earlier release to
   the same account.
   A record-level ``file`` export (``attributes`` + ``anonymity``, docs/privacy-insights.md
   §2) is anonymized first (:func:`policies.privacy.anonymize.anonymize` on the released people's
   attribute columns): a ``record-export`` verdict fails when no generalization meets
   the model, and min-size / difference judge the rows actually released.
3. any failed rule of severity ``block`` blocks the whole build (no release anywhere);
   otherwise each destination gets a sealed release with the hashed identifiers of its
   layout — or, for a record-level export, ``member_key`` (state only, never written)
   and the generalized attributes (+ the sensitive column), no identifiers.

``record`` persists the releases: membership files (sorted UInt64 member keys, 0600)
under ``state_dir/releases`` and ``releases`` rows, in one transaction.

Everything the gate decides is in ``GateOutcome.report``: a JSON document for
compliance officers (render with :func:`policies.report.render`).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from audiences.core.atomic import write_with
from audiences.core.config import ProjectConfig
from audiences.core.errors import ConfigError, InternalError, PolicyBlocked
from audiences.core.state import ensure_private_dir, new_id, project_salt, transaction, utcnow
from audiences.crm.consent import consent_denied, consent_signal
from audiences.crm.distinct import duplicated
from audiences.crm.identifiers import IDENTITY_FIELDS, LAYOUTS, hashed_layouts_frame
from audiences.crm.linkage import CoarseMemo, person_keys
from audiences.segments import Segment
from audiences.segments.reading import definition_yaml, reading
from policies import difference
from policies.pack import Pack
from policies.privacy.anonymize import HIERARCHIES, AnonymizationResult, anonymize
from policies.privacy.coarse import blocked_report, rounding
from policies.privacy.record_level import RecordLevel
from policies.release import FILE_ACCOUNT, Release, _mint, require_release
from policies.rules import (
    GOOGLE_KINDS,
    SALE_ONLY,
    Destination,
    DifferenceParams,
    FilterContext,
    OpaqueNameParams,
    PhiFinding,
    Rule,
    Verdict,
    make_opaque_name,
    min_size,
    opaque_name,
    phi_finding,
    rule_kinds_of,
    run_filter,
    segment_words,
    sensitive_destination,
)
from policies.sendable import (
    DENIED,
    META_SENT,
    NO_IDENTIFIER,
    NOT_GRANTED,
    google_refusals,
    unmatched,
)
from policies.suppression import SuppressionSet

REPORT_VERSION = 1
CONFIDENTIAL = (
    "CONFIDENTIAL — figures in this report are exact (not noised) and are for compliance "
    "review only; do not share them with marketers or ad platforms."
)
RELEASES_DIR = "releases"


@dataclass(frozen=True)
class GateInput:
    build_id: str
    segment: Segment
    config: ProjectConfig
    pack: Pack
    candidates: pl.DataFrame  # member_key (UInt64) + every contacts column + age (Int32)
    destinations: list[str]
    as_of: dt.date
    conn: sqlite3.Connection
    state_dir: Path
    actor: str
    # record-level file exports among ``destinations`` (resolved by the pipeline from the
    # destinations' settings): their rows are anonymized here before anything is released
    record_exports: Mapping[str, RecordLevel] = field(default_factory=dict)
    # the account's releases made by other states with this salt (copies of the project),
    # kept outside the project: the difference check compares with them too
    shared_releases: Callable[[str], Sequence[difference.EarlierRelease]] | None = None
    # the live audiences other projects (other salts, the same CRM or not) released to an
    # ad account: compared through the people's link keys (policies/difference.py)
    foreign_releases: Callable[[str], Sequence[difference.ForeignRelease]] | None = None
    # what the platform holds of each audience of this salt on an ad account after its
    # latest sync (not its newest release while small changes are held back)
    synced_releases: Callable[[str], Sequence[difference.EarlierRelease]] | None = None
    # (segment, destination) → where the audience's next sync starts from (what this state
    # knows the platform holds, an interrupted run's unsure rows, a full replace due): the
    # pattern check judges what that sync sends (policies/difference.py, PlatformView)
    platform_held: Callable[[str, str], difference.PlatformView] | None = None
    # coarse link keys the pipeline computed for these candidates while flagging them
    # (``audiences.crm.linkage.CoarseMemo``): the people reuse them where the rows match.
    # Trusted as the candidates are: whoever builds a GateInput hands the gate its data
    coarse_memo: CoarseMemo | None = None


@dataclass(frozen=True)
class GateOutcome:
    verdicts: list[Verdict]
    blocked: bool
    block_reasons: list[str]
    releases: dict[str, Release]
    report: dict[str, Any]
    state_dir: Path = field(default=Path(".audiences"), repr=False)
    # what decides who the CRM itself excludes (:func:`exclusion_digest`), kept with the
    # releases: another project trusts this one's exclusions only when its own are the same
    exclusions: str = ""


# ---------------------------------------------------------------------------------------
# Destinations


def destination_of(config: ProjectConfig, name: str) -> tuple[Destination, tuple[str, ...]]:
    """The destination as rules see it, and the identifier layouts its release carries."""
    spec = config.destination(name)
    extra = dict(spec.model_extra or {})
    kind = spec.kind
    if kind == "meta":
        raw = str(extra.get("ad_account_id") or "").strip()
        account = raw if raw.startswith("act_") else (f"act_{raw}" if raw else "")
        number = account.removeprefix("act_")
        if not number.isascii():  # a look-alike digit would make another account here
            raise ConfigError(
                f"destination {name!r} has an account id with characters other than ASCII: {raw!r}",
                "write the platform's account id in plain digits",
                where="audiences.toml",
            )
        if number.isdigit():  # act_0123 and act_123 are one account to the difference check
            account = f"act_{int(number)}"
        layouts: tuple[str, ...] = ("meta",)
    elif kind in GOOGLE_KINDS:  # one Google Ads account, whichever API uploads to it
        account = str(extra.get("customer_id") or "").replace("-", "").strip()
        if not account.isascii():  # a look-alike digit would make another account here
            raise ConfigError(
                f"destination {name!r} has a customer id with characters other than ASCII: "
                f"{account!r}",
                "write the Google Ads customer id in plain digits",
                where="audiences.toml",
            )
        layouts = ("google_ads",)
    elif kind == "file":
        account = FILE_ACCOUNT  # every file destination: the marketer reads all of them
        layouts = tuple(extra.get("layouts") or ("meta", "google_ads"))
        if extra.get("attributes"):
            layouts = ()  # a record-level export carries no identifiers
    else:
        account = str(extra.get("account") or extra.get("account_id") or "")
        layouts = tuple(extra.get("layouts") or ("meta", "google_ads"))
    if not account:
        raise ConfigError(
            f"destination {name!r} ({kind}) has no account",
            "set ad_account_id (meta) or customer_id (google_ads) in audiences.toml",
        )
    unknown = [layout for layout in layouts if layout not in LAYOUTS]
    if unknown:
        raise ConfigError(
            f"destination {name!r} asks for unknown layouts {unknown}",
            f"use {', '.join(LAYOUTS)}",
        )
    return Destination(name=name, kind=kind, account=account), layouts


def sale_basis(config: ProjectConfig, name: str) -> bool:
    """Is a transfer to destination ``name`` a sale? Its own ``basis = "sale"``, or that of
    any configured destination uploading to the same platform account: one account
    cannot both buy the data and not, so a second destination declared ``share`` for an
    account that buys is judged as a sale (docs/policy-rules.md, "Sale basis")."""
    if config.destination(name).basis == "sale":
        return True
    sellers = [n for n, spec in config.destinations.items() if spec.basis == "sale"]
    if not sellers:
        return False
    dest, _ = destination_of(config, name)
    for other in sellers:
        try:
            theirs, _ = destination_of(config, other)
        except ConfigError:  # a broken destination is refused where it is used
            continue
        same_platform = rule_kinds_of(theirs.kind) == rule_kinds_of(dest.kind)
        if same_platform and theirs.account == dest.account:
            return True
    return False


def sale_destinations(config: ProjectConfig, names: Iterable[str]) -> tuple[str, ...]:
    """The destinations among ``names`` whose transfer is a sale (:func:`sale_basis`)."""
    return tuple(n for n in names if sale_basis(config, n))


# ---------------------------------------------------------------------------------------
# Evaluation


def evaluate(inp: GateInput) -> GateOutcome:
    """Run the pack's rules over the segment's candidates; seal one release per
    destination unless a ``block`` rule fails."""
    config, pack, cand = inp.config, inp.pack, inp.candidates
    if "member_key" not in cand.schema or cand.schema["member_key"] != pl.UInt64:
        raise InternalError("candidates need a UInt64 member_key column")
    phi = _with_exported_sensitive(phi_finding(inp.segment, config), config, inp.record_exports)
    suppression = SuppressionSet.load(list(pack.suppression_lists), config.identity.default_country)
    sold = sale_destinations(config, inp.destinations)
    ctx = FilterContext(
        config,
        cand,
        inp.as_of,
        phi,
        suppression,
        segment=inp.segment,
        sale_destinations=sold,
        coarse_memo=inp.coarse_memo,
    )

    # 1. filters
    filter_verdicts, excluded, unsold, listed = _filter_verdicts(pack, ctx)
    eligible = _eligible_members(
        config,
        cand,
        excluded,
        unsold,
        sold,
        persons=lambda: ctx.persons,
        shared=lambda: ctx.persons_shared,
    )
    # forced removals in another project's audience too: only what the CRM itself says
    # (a suppression list is a file of this project's: it could name anyone)
    eligible = replace(eligible, crm_excluded=excluded & ~listed)

    # 2. destinations
    checks = _check_destinations(inp, phi, eligible)

    # 3. verdicts in pack order, decision
    verdicts = _verdicts_in_pack_order(pack, filter_verdicts, checks)
    reasons = [v.public_reason() for v in verdicts if v.blocking]
    if not inp.destinations:
        reasons.append("gate: the segment names no destination — add `destinations:` to it")
    blocked = bool(reasons)
    releases = {} if blocked else _mint_releases(inp, eligible, checks, verdicts)
    diff_checks = [c for check in checks for c in check.diff_checks]
    report = _report(
        inp,
        phi,
        verdicts,
        blocked,
        reasons,
        releases,
        diff_checks,
        eligible.without_key,
        eligible.members.height,
    )
    report["record_exports"] = [c.export.summary for c in checks if c.export is not None]
    report["figures"]["eligible_records"] = eligible.records  # people are counted once
    if blocked:  # no exact count below k in a blocked build's report (issue #15)
        report = blocked_report(report, rounding(pack).k)
    return GateOutcome(
        verdicts=verdicts,
        blocked=blocked,
        block_reasons=reasons,
        releases=releases,
        report=report,
        state_dir=inp.state_dir,
        exclusions=exclusion_digest(config, pack),
    )


# where the contacts come from: as resolved (two projects name one file each in their own
# way), never as written
_LOCATION = frozenset({"path", "table", "db_schema", "schema", "uri_env", "version_column"})
# the identity columns that decide who is excluded: the linkage of duplicates of opt-outs
# (mailbox, phone, name + country + postal code) and the age rules
_EXCLUDING_IDENTITY = (
    "email", "phone", "first_name", "last_name", "zip", "country", "birth_date",
    "default_country",
)  # fmt: skip


def exclusion_digest(config: ProjectConfig, pack: Pack) -> str:
    """A digest of everything that decides whom the CRM itself excludes from every
    audience (the filter rules' parameters, the consent columns and the identity columns
    the linkage and the age rules read, the jurisdiction column, which contacts are read
    and how — the file itself, resolved). A person this build excludes counts as a forced
    removal in another project's audience when that project's digest is the same (its own
    rules, over the same data, remove them too at its next sync) or when its platform
    copy already dropped them. Otherwise a stricter rule of the new project's own (a
    higher minimum age), or a doctored copy of the export, would make a difference of a
    few people pass as removals (policies/difference.py)."""
    source = config.sources.contacts
    contacts = source.model_dump(mode="json")
    where = [source.kind, source.table, source.db_schema, source.uri_env]
    if source.path is not None:  # the file itself (a copy of the export is another source)
        where.append(str(config.path(source.path).resolve()))
    identity = config.identity.model_dump(mode="json")
    doc = {
        "rules": [
            {"id": r.id, "kind": r.kind, "severity": r.severity, "jurisdictions": r.jurisdictions,
             "params": r.params.model_dump(mode="json")}
            for r in pack.rules
            if r.scope == "filter"
        ],
        "consent": config.consent.model_dump(mode="json"),
        "identity": {k: identity[k] for k in _EXCLUDING_IDENTITY},
        "jurisdiction_column": config.policy.jurisdiction_column,
        "contacts": {k: v for k, v in contacts.items() if k not in _LOCATION},
        "source": where,
    }  # fmt: skip
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=list)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _filter_verdicts(
    pack: Pack, ctx: FilterContext
) -> tuple[dict[str, Verdict], np.ndarray, np.ndarray, np.ndarray]:
    """Each filter rule's verdict (by rule id), the mask of candidates they exclude, the
    mask of those the sale-only rules exclude from sale-basis destinations only, and the
    mask of the excluded that no rule but a suppression list excludes.

    A ``warn`` filter reports the people it would exclude but keeps them."""
    verdicts: dict[str, Verdict] = {}
    excluded = np.zeros(ctx.candidates.height, dtype=bool)
    unsold = np.zeros(ctx.candidates.height, dtype=bool)
    by_crm = np.zeros(ctx.candidates.height, dtype=bool)
    for rule in pack.rules:
        if rule.scope != "filter":
            continue
        verdict = run_filter(rule, ctx)  # narrowed to a jurisdiction pack's people
        target = unsold if rule.kind in SALE_ONLY else excluded
        before = int(target.sum())
        if verdict.excluded is not None and rule.severity == "block" and verdict.passed:
            target |= verdict.excluded.to_numpy()
            if rule.kind != "suppression" and rule.kind not in SALE_ONLY:
                by_crm |= verdict.excluded.to_numpy()
        removed = int(target.sum()) - before
        evidence = {**verdict.evidence, "removed": removed}
        if rule.severity == "warn" and verdict.evidence.get("excluded", 0):
            verdict = replace(
                verdict,
                passed=False,
                evidence=evidence,
                detail=verdict.detail + " (warn only: not removed)",
            )
        else:
            verdict = replace(verdict, evidence=evidence)
        verdicts[rule.id] = verdict
    return verdicts, excluded, unsold, excluded & ~by_crm


@dataclass(frozen=True)
class _Eligible:
    """The candidates the filters kept, one row per person."""

    members: pl.DataFrame  # member key, identity columns, ad consent columns
    keys: np.ndarray  # sorted member keys of ``members``
    exempt: np.ndarray  # sorted keys the filters removed: exempt removals (difference)
    kept_mask: np.ndarray  # over the candidates: kept and with a member key
    without_key: int  # candidates without a member key
    records: int  # CRM records behind ``members`` (people are counted once)
    # sorted member keys the sale-only rules keep off the sale-basis destinations ``sold``
    # (forced removals there, exempt from their difference checks)
    unsold: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))
    sold: tuple[str, ...] = ()
    # the candidate records the CRM's own rules excluded (not a suppression list of this
    # project's): forced removals from other projects' audiences as well
    crm_excluded: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    # computed once per gate, when first needed: every layout the destinations carry, over
    # ``members`` (:func:`_hashed_members`), and who Google would refuse (:func:`_google`)
    cache: dict[str, Any] = field(default_factory=dict)

    def unsold_for(self, destination: str) -> np.ndarray:
        """The sorted member keys ``destination`` may not receive: ``unsold`` for a
        sale-basis destination, none for the others."""
        return self.unsold if destination in self.sold else self.unsold[:0]

    def keys_for(self, destination: str, keys: np.ndarray) -> np.ndarray:
        """``keys`` without the members a sale-basis ``destination`` may not receive."""
        unsold = self.unsold_for(destination)
        if not unsold.size or not keys.size:
            return keys
        kept: np.ndarray = keys[~_isin_sorted(keys, unsold)]
        return kept


def _eligible_members(
    config: ProjectConfig,
    cand: pl.DataFrame,
    excluded: np.ndarray,
    unsold: np.ndarray | None = None,
    sold: tuple[str, ...] = (),
    *,
    persons: Callable[[], pl.Series | None],
    shared: Callable[[], pl.Series | None] | None = None,
) -> _Eligible:
    """The members a release may carry: not excluded, with a member key, deduplicated.
    ``persons``: the person of each candidate record, as the filters' context keeps it
    (computed once per gate: the jurisdiction rules may have needed it already), and
    ``shared`` which of them have several records (the same, of those people).

    One definition of a person for the whole gate: the candidates' records linked
    transitively, the records a filter excluded included. A record a filter drops (a
    minor's, say) that shares an email with one released record and a phone with another
    still makes them one person: counted once toward ``k`` and released once."""
    keys_all = cand.get_column("member_key")
    no_key = keys_all.is_null().to_numpy() if cand.height else np.zeros(0, dtype=bool)
    kept_mask = ~excluded & ~no_key
    # only what a release carries: member key, identity columns, ad consent columns
    columns = _release_columns(config, cand)
    cid = config.sources.contacts.id
    records = (
        _strictest_per_person(config, cand, persons, shared)
        .select(*columns, *([cid] if cid not in columns else []))
        .filter(pl.Series(kept_mask))
    )
    known = persons()
    if known is None:  # (only without the CRM id column, which the select above needs)
        raise InternalError("the gate's candidates need the CRM id column")
    members = _one_row_per_person(config, records, known.filter(pl.Series(kept_mask)))
    keys = difference.sorted_keys(members.get_column("member_key"))
    exempt = difference.sorted_keys(keys_all.filter(pl.Series(excluded & ~no_key)))
    if exempt.size and keys.size:
        exempt = exempt[~_isin_sorted(exempt, keys)]
    not_sold = np.zeros(0, dtype=np.uint64)
    if sold and unsold is not None and unsold.any():
        # a person's released key is one of their records' keys: scoped() widened the
        # exclusion to all of a person's candidate records, so each of them is here
        not_sold = difference.sorted_keys(keys_all.filter(pl.Series(unsold & ~no_key)))
    return _Eligible(
        members, keys, exempt, kept_mask, int(no_key.sum()), records.height, not_sold, sold
    )


def _one_row_per_person(
    config: ProjectConfig, records: pl.DataFrame, persons: pl.Series
) -> pl.DataFrame:
    """People, not records: records :func:`person_keys` links (or sharing one member key)
    are one person, released once as the record with the smallest CRM id (its member key),
    each identifier taken from the first of the person's records, by CRM id, that has it.
    ``persons``: the person of each record, linked over all the gate's candidates (never
    among ``records`` alone: see :func:`_eligible_members`)."""
    cid = config.sources.contacts.id
    # (which people have several records: computed once, as is the member keys' answer)
    shared = duplicated(persons)
    if not shared.any() and not duplicated(records.get_column("member_key")).any():
        return records.drop(cid) if cid not in _release_columns(config, records) else records
    keep = [c for c in records.columns if c != "__person"]
    signals = _signal_columns(config, records)
    labelled = records.with_columns(persons.alias("__person"))
    # People with one record are that record; the merge runs over the others only (a
    # few per cent of the records). The result is in person order, as the merge's was.
    merged = (
        labelled.filter(shared)
        .sort("__person", cid)
        .group_by("__person", maintain_order=True)
        .agg(
            pl.exclude(signals).drop_nulls().first(),
            *[_strictest(records, config, column) for column in signals],
        )
    )
    single = labelled.filter(~shared).select(merged.columns)
    release_columns = _release_columns(config, records)
    return (
        pl.concat([single, merged])
        .sort("__person")
        .select([c for c in keep if c in release_columns])
    )


def _signal_columns(config: ProjectConfig, records: pl.DataFrame) -> list[str]:
    """The CRM columns behind Google's two consent signals that the records carry."""
    mapped = (config.consent.ad_user_data, config.consent.ad_personalization)
    return sorted({c for c in mapped if c is not None and c in records.columns})


def _strictest_per_person(
    config: ProjectConfig,
    cand: pl.DataFrame,
    persons_of: Callable[[], pl.Series | None] | None = None,
    shared_of: Callable[[], pl.Series | None] | None = None,
) -> pl.DataFrame:
    """``cand`` with each Google consent signal column set, on every record of a person, to
    the person's strictest answer among all their candidate records, the ones the filters
    excluded included: a DENIED on a record a filter dropped still speaks for the person
    whose other record is released (whatever the linkage of the pack is set to)."""
    signals = _signal_columns(config, cand)
    cid = config.sources.contacts.id
    if not signals or cid not in cand.columns or cand.height < 2:
        return cand
    if not _any_denied(cand, signals):  # nobody refused: the merge decides the rest
        return cand
    known = persons_of() if persons_of is not None else None
    persons = (known if known is not None else person_keys(cand, config, by=cid)).alias("__person")
    # A person with one record keeps that record's answer: the window runs over the
    # records of people with several (a few per cent; over every candidate it took 2.2 s
    # for 2M records at 10M contacts).
    # (``shared_of`` answers for the people ``persons_of`` gave, computed once per gate)
    known_shared = shared_of() if known is not None and shared_of is not None else None
    shared = known_shared if known_shared is not None else duplicated(persons)
    if not shared.any():
        return cand
    at = shared.arg_true()
    strictest = (
        cand.select(signals)
        .filter(shared)
        .with_columns(persons.filter(shared))
        .select([_strictest(cand, config, c).over("__person") for c in signals])
    )
    return cand.with_columns(
        cand.get_column(c).scatter(at, strictest.get_column(c)) for c in signals
    )


def _any_denied(records: pl.DataFrame, signals: list[str]) -> bool:
    """Does any record say DENIED in one of the ``signals`` columns? Asked of each
    column's distinct values (a consent column holds a handful: 933k candidates, 79 →
    10 ms), which answer it as the records do: the test reads one value at a time."""
    return any(
        records.select(pl.col(c).unique()).select(consent_denied(records, c).any()).item()
        for c in signals
    )


def _strictest(records: pl.DataFrame, config: ProjectConfig, column: str) -> pl.Expr:
    """A person's consent signal when their records disagree: a DENIED on any record wins,
    then a value that is no consent word (sent as UNSPECIFIED), then GRANTED; a record
    that says nothing (null) does not outweigh one that answered. Taking the first
    non-empty value by CRM id instead let a GRANTED on an older record override a later
    DENIED (docs/policy-rules.md, "People, not records")."""
    signal = consent_signal(records, column, column)
    rank = (
        pl.when(pl.col(column).is_null())
        .then(3)
        .when(signal == "DENIED")
        .then(0)
        .when(signal == "GRANTED")
        .then(2)
        .otherwise(1)
    )
    return pl.col(column).sort_by(rank, maintain_order=True).first()


@dataclass
class _DestinationCheck:
    """What the destination rules found for one destination."""

    dest: Destination
    layouts: tuple[str, ...]
    opaque_name: str
    export: _RecordExport | None  # a record-level export's anonymized rows
    verdicts: dict[str, Verdict] = field(default_factory=dict)  # by rule id
    hold: tuple[str | None, int, int] = (None, 0, 0)  # hold_against, holds, k_diff
    diff_checks: list[dict[str, Any]] = field(default_factory=list)


def _check_destinations(
    inp: GateInput, phi: PhiFinding, eligible: _Eligible
) -> list[_DestinationCheck]:
    salt = project_salt(inp.state_dir)
    words = segment_words(inp.segment)
    return [_check_destination(inp, name, phi, eligible, salt, words) for name in inp.destinations]


def _check_destination(
    inp: GateInput,
    dest_name: str,
    phi: PhiFinding,
    eligible: _Eligible,
    salt: bytes,
    words: frozenset[str],
) -> _DestinationCheck:
    """Run the destination rules, in pack order, for one destination."""
    dest, layouts = destination_of(inp.config, dest_name)
    dest_keys = eligible.keys
    # who the platform takes: counted, and released, alone
    google, refused = _unsendable(inp, eligible, dest, layouts)
    if refused is not None:
        dest_keys = difference.sorted_keys(
            eligible.members.filter(~refused).get_column("member_key")
        )
    dest_keys = eligible.keys_for(dest_name, dest_keys)  # a sale needs an authorization
    settings = inp.record_exports.get(dest_name)
    if settings is None and not layouts:
        raise InternalError(
            f"destination {dest_name!r} is a record-level export but the gate was given "
            "no record-level settings for it (GateInput.record_exports)"
        )
    export = None
    if settings is not None:  # rules judge the rows that would really be released
        kept, unsold = eligible.kept_mask, eligible.unsold_for(dest_name)
        if unsold.size:
            keys = inp.candidates.get_column("member_key").to_numpy()
            kept = kept & ~_isin_sorted(keys, unsold)
        export = _record_export(inp.candidates, kept, settings, dest)
        if export.members is not None:
            dest_keys = export.keys
    name_rules = inp.pack.of_kind("opaque_name")
    params = name_rules[0].params if name_rules else OpaqueNameParams(prefix="aud", length=8)
    name = make_opaque_name(inp.segment.name, salt, params, words)  # type: ignore[arg-type]
    check = _DestinationCheck(dest, layouts, name, export)
    earlier: list[difference.EarlierRelease] | None = None
    for rule in inp.pack.rules:
        if rule.scope != "destination":
            continue
        if rule.kind == "sensitive_destination":
            v = _sensitive_verdict(rule, dest, layouts, inp.config, phi)
        elif rule.kind == "opaque_name":
            v = opaque_name(rule, dest, name, words)
        elif rule.kind == "min_size":
            v = min_size(rule, dest, int(dest_keys.size))
            if google is not None:  # the people the count leaves out, and why
                v = replace(v, evidence={**v.evidence, **google.counts})
            elif refused is not None:
                v = replace(v, evidence={**v.evidence, "no_identifier": int(refused.sum())})
        elif rule.kind == "difference" and _below_min_size(inp, dest, int(dest_keys.size)):
            v = _not_compared(rule, dest, int(dest_keys.size))
        elif rule.kind == "difference":
            if earlier is None:
                earlier = difference.earlier_releases(inp.conn, dest.account, inp.state_dir)
                if inp.shared_releases is not None:
                    earlier = difference.merged(earlier, inp.shared_releases(dest.account))
            exempt, unsold = eligible.exempt, eligible.unsold_for(dest_name)
            if unsold.size:  # forced removals there
                exempt = np.union1d(exempt, unsold)
            if google is not None and google.consent_keys.size:  # forced there too
                exempt = np.union1d(exempt, google.consent_keys)
            foreign: Sequence[difference.ForeignRelease] = ()
            synced: Sequence[difference.EarlierRelease] = ()
            if inp.foreign_releases is not None and dest.kind in ("meta", *GOOGLE_KINDS):
                foreign = inp.foreign_releases(dest.account)
            if inp.synced_releases is not None and dest.kind in ("meta", *GOOGLE_KINDS):
                synced = inp.synced_releases(dest.account)
            links = (  # (a sale-only exclusion is this project's: not exempt there)
                _link_keys(inp, eligible.members, dest_keys, eligible.crm_excluded, layouts[0])
                if foreign
                else None
            )
            v = _difference_verdict(
                inp, rule, check, dest_keys, earlier, exempt, foreign, links, synced
            )
        else:  # pragma: no cover - RULE_KINDS and this dispatch are kept in step
            raise InternalError(f"no evaluator for rule kind {rule.kind}")
        check.verdicts[rule.id] = v
    return check


def _below_min_size(inp: GateInput, dest: Destination, members: int) -> bool:
    """Whether a blocking min-size rule refuses this many members for ``dest``."""
    return any(
        not min_size(r, dest, members).passed
        for r in inp.pack.of_kind("min_size")
        if r.severity == "block"
    )


def _not_compared(rule: Rule, dest: Destination, members: int) -> Verdict:
    """The difference rule's verdict on a release min-size refuses anyway: not compared.
    A comparison of a few people would tell, through pass or block, whether they are in
    the account's other audiences (a segment of one named person, or'ed with nothing)."""
    p: DifferenceParams = rule.params  # type: ignore[assignment]
    return Verdict(
        id=rule.id,
        kind=rule.kind,
        severity=rule.severity,
        passed=True,
        evidence={"members": members, "k_diff": p.k_diff, "earlier_releases_compared": 0},
        rationale=rule.rationale,
        source=rule.source,
        destination=dest.name,
        detail="not compared: the minimum size refuses this release (a comparison would "
        "tell whether so few people are in the account's other audiences)",
    )


def file_platform(config: ProjectConfig, name: str) -> str:
    """What a file destination is for: ``meta``, ``google_ads`` or ``other`` (its ``for``)."""
    extra = dict(config.destination(name).model_extra or {})
    return str(extra.get("for") or "other")


def _sensitive_verdict(
    rule: Rule, dest: Destination, layouts: tuple[str, ...], config: ProjectConfig, phi: PhiFinding
) -> Verdict:
    """A file is judged as every platform it is for or carries a layout of: a PHI-derived
    segment never leaves as a Customer Match upload, in a file or otherwise."""
    if dest.kind != "file":
        return sensitive_destination(rule, dest, phi)
    purpose = file_platform(config, dest.name)
    platforms = sorted({purpose, *layouts} - {"other"})
    verdicts = [sensitive_destination(rule, replace(dest, kind=k), phi) for k in platforms]
    chosen = next((v for v in verdicts if not v.passed), None) or next(
        (v for v in verdicts if v.evidence.get("applies")), None
    )
    if chosen is None:
        return sensitive_destination(rule, dest, phi)
    what = f"file for {purpose} carrying layouts {', '.join(layouts) or 'none'}"
    return replace(chosen, detail=f"{what}: {chosen.detail}")


def _difference_verdict(
    inp: GateInput,
    rule: Rule,
    check: _DestinationCheck,
    dest_keys: np.ndarray,
    earlier: list[difference.EarlierRelease],
    exempt: np.ndarray,
    foreign: Sequence[difference.ForeignRelease] = (),
    links: Callable[[], tuple[pl.DataFrame, pl.DataFrame]] | None = None,
    synced: Sequence[difference.EarlierRelease] = (),
) -> Verdict:
    """The difference rule's verdict; records the hold and the per-release checks."""
    dest = check.dest
    held_now = None
    if inp.platform_held is not None and dest.kind in ("meta", *GOOGLE_KINDS):
        held_now = functools.partial(inp.platform_held, inp.segment.name, dest.name)
    result = difference.check(
        rule, dest, inp.segment.name, dest_keys, earlier, exempt,
        foreign=foreign, new_links=links, synced=synced, held_now=held_now,
        exclusions=exclusion_digest(inp.config, inp.pack),
    )  # fmt: skip
    k_diff = rule.params.k_diff  # type: ignore[attr-defined]
    check.hold = (result.hold_against, result.holds, k_diff)
    check.diff_checks += [
        {"destination": dest.name, "account": dest.account, "rule": rule.id, **c}
        for c in result.verdict.checks
    ]
    return result.verdict


def _link_keys(
    inp: GateInput, members: pl.DataFrame, dest_keys: np.ndarray, excluded: np.ndarray, layout: str
) -> Callable[[], tuple[pl.DataFrame, pl.DataFrame]]:
    """The link keys of the destination's people and of the candidate records ``excluded``
    (a mask), hashed as the release carries them (computed only when another project's
    audience is on the account; a person still released is never counted as gone there:
    :func:`policies.difference.translate`)."""

    def links(frame: pl.DataFrame) -> pl.DataFrame:
        hashed = _hashed(frame, inp.config, [layout], inp.as_of)[layout]
        return difference.link_frame(
            pl.concat([frame.select("member_key"), hashed], how="horizontal")
        )

    def compute() -> tuple[pl.DataFrame, pl.DataFrame]:
        wanted = pl.Series("member_key", dest_keys, dtype=pl.UInt64)
        released = members.filter(pl.col("member_key").is_in(wanted.implode()))
        gone = inp.candidates.filter(pl.Series(excluded)).drop_nulls("member_key")
        return links(released), links(gone)

    return compute


def _verdicts_in_pack_order(
    pack: Pack, filter_verdicts: dict[str, Verdict], checks: list[_DestinationCheck]
) -> list[Verdict]:
    """Filter verdicts, then each destination rule's per destination, then the
    record-level export verdicts."""
    verdicts: list[Verdict] = []
    for rule in pack.rules:
        if rule.scope == "filter":
            verdicts.append(filter_verdicts[rule.id])
        else:
            verdicts += [c.verdicts[rule.id] for c in checks]
    verdicts += [c.export.verdict for c in checks if c.export is not None]
    return verdicts


def _mint_releases(
    inp: GateInput, eligible: _Eligible, checks: list[_DestinationCheck], verdicts: list[Verdict]
) -> dict[str, Release]:
    """A sealed release per destination: hashed identifiers of its layouts, or a
    record-level export's anonymized rows."""
    releases: dict[str, Release] = {}
    created_at = utcnow()
    hashed = _hashed_members(inp, eligible)
    excluded_series = pl.Series("member_key", eligible.exempt, dtype=pl.UInt64)
    for check in checks:
        dest, layouts = check.dest, check.layouts
        google, refused = _unsendable(inp, eligible, dest, layouts)
        if check.export is not None and check.export.members is not None:
            members = check.export.members
        else:
            members = _members(eligible.members, hashed, dest, layouts, inp.config, google)
            if dest.kind not in GOOGLE_KINDS and refused is not None:  # (Google's: filtered)
                members = members.filter(~refused)
        hold_against, n_holds, k_diff = check.hold
        excluded = excluded_series
        if google is not None:  # a refused consent's removal is forced, never held
            consent = pl.Series("member_key", google.consent_keys, dtype=pl.UInt64)
            excluded = pl.concat([excluded_series, consent])
        if eligible.unsold_for(dest.name).size:  # forced there, never held
            unsold = pl.Series("member_key", eligible.unsold, dtype=pl.UInt64)
            members = members.filter(~pl.col("member_key").is_in(unsold.implode()))
            excluded = pl.concat([excluded, unsold])
        releases[dest.name] = _mint(
            build_id=inp.build_id,
            release_id=new_id("r"),
            segment=inp.segment.name,
            segment_digest=inp.segment.digest,
            policy_digest=inp.pack.digest,
            verdict_digest=verdict_digest(verdicts, dest.name),
            destination=dest.name,
            kind=dest.kind,
            account=dest.account,
            created_at=created_at,
            opaque_name=check.opaque_name,
            members=members,
            layouts=layouts,
            k_diff=k_diff,
            hold_against=hold_against,
            holds=n_holds,
            excluded_keys=excluded,
            purpose="release",
        )
    return releases


@dataclass(frozen=True)
class RemovalInput:
    """What :func:`forced_removals` judges: the people a platform audience holds now."""

    build_id: str
    segment: Segment
    config: ProjectConfig
    pack: Pack
    # current CRM rows of the people on the platforms (member_key + the gate's columns + age,
    # and the linkage flag when the pack links duplicates of opt-outs), whatever the
    # segment's definition says today
    current: pl.DataFrame
    platform: Mapping[str, pl.DataFrame]  # destination → rows on it (member_key + uploaded)
    as_of: dt.date
    state_dir: Path


@dataclass(frozen=True)
class RemovalOutcome:
    releases: dict[str, Release]  # removal-only releases (purpose "removal"), maybe empty
    verdicts: list[Verdict]  # the filter verdicts over the people on the platforms
    gone: int  # people on a platform whose CRM record is gone (removed too)


def forced_removals(inp: RemovalInput) -> RemovalOutcome:
    """Removal-only releases: the people on each platform audience that the pack's filter
    rules exclude on current data (consent, do-not-contact, deceased, suppression,
    authorization, ad personalization, linkage), plus those whose CRM record is gone.

    Runs when a segment's adds are blocked (no approval, a failing rule, min-size): these
    removals never wait for anything. Nothing is recorded; the releases carry only rows the
    platform already holds, so nothing new can leave the system through them.
    """
    cand = inp.current.filter(pl.col("member_key").is_not_null())
    phi = phi_finding(inp.segment, inp.config)
    suppression = SuppressionSet.load(
        list(inp.pack.suppression_lists), inp.config.identity.default_country
    )
    sold = sale_destinations(inp.config, inp.platform)
    ctx = FilterContext(
        inp.config, cand, inp.as_of, phi, suppression, segment=inp.segment, sale_destinations=sold
    )
    by_rule, excluded, unsold, _ = _filter_verdicts(inp.pack, ctx)
    keys = cand.get_column("member_key")
    kept = difference.sorted_keys(keys.filter(pl.Series(~excluded)))
    kept_unsold = difference.sorted_keys(keys.filter(pl.Series(~excluded & ~unsold)))
    verdicts = [by_rule[r.id] for r in inp.pack.rules if r.scope == "filter"]
    releases: dict[str, Release] = {}
    gone = 0
    created_at = utcnow()
    name_rules = inp.pack.of_kind("opaque_name")
    params = name_rules[0].params if name_rules else OpaqueNameParams(prefix="aud", length=8)
    salt = project_salt(inp.state_dir)
    name = make_opaque_name(inp.segment.name, salt, params, segment_words(inp.segment))  # type: ignore[arg-type]
    known = difference.sorted_keys(keys)
    for dest_name, rows in inp.platform.items():
        platform_keys = rows.get_column("member_key")
        in_crm = pl.Series(_isin_sorted(platform_keys.to_numpy(), known)) if known.size else None
        may = kept_unsold if dest_name in sold else kept
        allowed = pl.Series(_isin_sorted(platform_keys.to_numpy(), may)) if may.size else None
        drop = ~allowed if allowed is not None else pl.Series([True] * rows.height)
        if in_crm is not None:
            gone += int((~in_crm).sum())
        members = rows.filter(drop) if rows.height else rows
        releases[dest_name] = _removal(
            inp.build_id,
            inp.segment.name,
            inp.pack,
            dest_name,
            members,
            segment_digest=inp.segment.digest,
            verdict_digest=verdict_digest(verdicts, dest_name),
            created_at=created_at,
            opaque_name=name,
            config=inp.config,
        )
    return RemovalOutcome(releases, verdicts, gone)


def takedown_release(
    build_id: str,
    segment: str,
    config: ProjectConfig,
    pack: Pack,
    destination: str,
    rows: pl.DataFrame,
) -> Release:
    """A removal-only release of every row a platform audience holds (``audiences
    takedown``): it can only take people off a platform."""
    return _removal(build_id, segment, pack, destination, rows, config=config)


def _removal(
    build_id: str,
    segment: str,
    pack: Pack,
    destination: str,
    rows: pl.DataFrame,
    *,
    config: ProjectConfig,
    segment_digest: str = "",
    verdict_digest: str = "takedown",
    created_at: str | None = None,
    opaque_name: str = "",
) -> Release:
    """A sealed release whose only effect is to take ``rows`` off ``destination`` (the
    defaults are a takedown's: no segment digest, no verdicts, no name)."""
    dest, layouts = destination_of(config, destination)
    return _mint(
        build_id=build_id,
        release_id=new_id("rm"),
        segment=segment,
        segment_digest=segment_digest,
        policy_digest=pack.digest,
        verdict_digest=verdict_digest,
        destination=destination,
        kind=dest.kind,
        account=dest.account,
        created_at=created_at or utcnow(),
        opaque_name=opaque_name,
        members=rows,
        layouts=layouts,
        k_diff=0,
        hold_against=None,
        holds=0,
        excluded_keys=rows.get_column("member_key"),
        purpose="removal",
    )


def _release_columns(config: ProjectConfig, cand: pl.DataFrame) -> list[str]:
    wanted = ["member_key"]
    wanted += [getattr(config.identity, f) for f in IDENTITY_FIELDS]
    wanted += [c for c in (config.consent.ad_user_data, config.consent.ad_personalization) if c]
    seen: list[str] = []
    for column in wanted:
        if column is not None and column in cand.schema and column not in seen:
            seen.append(column)
    return seen


def _isin_sorted(needles: np.ndarray, hay: np.ndarray) -> np.ndarray:
    idx = np.searchsorted(hay, needles)
    np.minimum(idx, hay.size - 1, out=idx)
    found: np.ndarray = hay[idx] == needles
    return found


def verdict_digest(verdicts: list[Verdict], destination: str) -> str:
    """SHA-256 of the verdicts that cleared ``destination`` (global ones included)."""
    body = [v.to_dict() for v in verdicts if v.destination in (None, destination)]
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def _hashed(
    base: pl.DataFrame, config: ProjectConfig, layouts: list[str], as_of: dt.date
) -> dict[str, pl.DataFrame]:
    return hashed_layouts_frame(base, config.identity, layouts, as_of=as_of)  # type: ignore[arg-type]


def _hashed_members(inp: GateInput, eligible: _Eligible) -> dict[str, pl.DataFrame]:
    """Every layout the segment's destinations carry, over the eligible people: computed
    once per gate (a Google destination's counts need it before the release does)."""
    if "hashed" not in eligible.cache:
        layouts = {
            layout for name in inp.destinations for layout in destination_of(inp.config, name)[1]
        }
        eligible.cache["hashed"] = _hashed(eligible.members, inp.config, sorted(layouts), inp.as_of)
    hashed: dict[str, pl.DataFrame] = eligible.cache["hashed"]
    return hashed


def _unsendable(
    inp: GateInput, eligible: _Eligible, dest: Destination, layouts: tuple[str, ...]
) -> tuple[_GoogleRefusals | None, pl.Series | None]:
    """Who the destination's platform would not take, over the eligible people
    (policies/sendable.py): on Google, and in a file ``for`` Google that carries its
    layout, Google's refusals (identifier and consent); on Meta, the people the columns
    the connector uploads do not name; in a file for Meta, those its Meta layout does not
    name; in any other file, those no layout it carries names. Returns Google's refusals
    where they apply, and the mask of who is not taken (None: a record-level export, which
    carries no identifier)."""
    purpose = file_platform(inp.config, dest.name) if dest.kind == "file" else None
    if dest.kind in GOOGLE_KINDS or (purpose == "google_ads" and "google_ads" in layouts):
        google = _google(inp, eligible)
        return google, google.refused
    if not layouts:
        return None, None
    if purpose in ("meta", "google_ads"):  # judged by that platform's rule alone
        layouts = tuple(layout for layout in layouts if layout == purpose)
    return None, _nameless(inp, eligible, layouts, sent_only=dest.kind == "meta")


def _nameless(
    inp: GateInput, eligible: _Eligible, layouts: tuple[str, ...], *, sent_only: bool
) -> pl.Series:
    """Over the eligible people: who no layout of ``layouts`` names to its platform
    (:func:`~policies.sendable.unmatched`; ``sent_only``: judged on the columns the Meta
    connector uploads) — not counted, not released. No layout: no one is named."""
    key = f"nameless:{','.join(layouts)}:{sent_only}"
    if key not in eligible.cache:
        hashed = _hashed_members(inp, eligible)
        mask = pl.repeat(True, eligible.members.height, dtype=pl.Boolean, eager=True)
        for layout in layouts:
            columns = [c for c in hashed[layout].columns if not sent_only or c in META_SENT]
            mask = mask & hashed[layout].select(unmatched(layout, columns)).to_series()
        eligible.cache[key] = mask.alias("nameless")
    nameless: pl.Series = eligible.cache[key]
    return nameless


@dataclass(frozen=True)
class _GoogleRefusals:
    """Of the eligible people, who Google would not take (policies/sendable.py)."""

    refused: pl.Series  # over ``members``: not counted, not released
    consent_keys: np.ndarray  # sorted: refused for consent (DENIED, or not GRANTED where
    # the EU user consent policy applies) — forced removals, never held
    counts: dict[str, int]  # evidence: people refused for a missing identifier / consent


def _google(inp: GateInput, eligible: _Eligible) -> _GoogleRefusals:
    if "google" in eligible.cache:
        cached: _GoogleRefusals = eligible.cache["google"]
        return cached
    base = eligible.members
    frame = pl.concat(
        [_hashed_members(inp, eligible)["google_ads"], _signals(base, inp.config)], how="horizontal"
    )
    reasons = google_refusals(frame.columns, adding=True)
    flags = frame.select(
        reasons[NO_IDENTIFIER].alias("no_id"),
        reasons[DENIED].alias("denied"),
        reasons[NOT_GRANTED].alias("not_granted"),
    )
    no_id, denied, not_granted = flags.get_columns()
    consent = denied | not_granted
    out = _GoogleRefusals(
        refused=(no_id | consent).alias("refused"),
        consent_keys=difference.sorted_keys(base.filter(consent).get_column("member_key")),
        counts={
            "google_no_identifier": int((no_id & ~consent).sum()),
            "google_consent_not_granted": int((not_granted & ~denied).sum()),
        },
    )
    eligible.cache["google"] = out
    return out


def _signals(base: pl.DataFrame, config: ProjectConfig) -> pl.DataFrame:
    """A person's Google consent signals, as sent (GRANTED, DENIED or UNSPECIFIED)."""
    return base.select(
        consent_signal(base, config.consent.ad_user_data, "ad_user_data"),
        consent_signal(base, config.consent.ad_personalization, "ad_personalization"),
    )


def _members(
    base: pl.DataFrame,
    hashed: dict[str, pl.DataFrame],
    dest: Destination,
    layouts: tuple[str, ...],
    config: ProjectConfig,
    google: _GoogleRefusals | None = None,
) -> pl.DataFrame:
    parts = [base.select("member_key")]
    if dest.kind in ("meta", *GOOGLE_KINDS):
        parts.append(hashed[layouts[0]])
    else:
        parts += [
            hashed[layout].rename({c: f"{layout}_{c}" for c in hashed[layout].columns})
            for layout in layouts
        ]
    if dest.kind in GOOGLE_KINDS:
        if google is None:
            raise InternalError("a Google release without its refusals")
        parts.append(_signals(base, config))
        return pl.concat(parts, how="horizontal").filter(~google.refused)
    return pl.concat(parts, how="horizontal")


# ---------------------------------------------------------------------------------------
# Record-level exports (docs/privacy-insights.md §2)

RECORD_EXPORT_RULE = "record-export"
RECORD_EXPORT_RATIONALE = (
    "A file of rows about people is released only k-anonymous on the columns an outsider "
    "could link on (optionally l-diverse or t-close on one sensitive column), within a "
    "suppression limit, and without any identifier: a hashed email next to attributes "
    "re-identifies the row for anyone who holds the email. The re-identification risk is "
    "reported the way ARX does (prosecutor, journalist, marketer)."
)
RECORD_EXPORT_SOURCE = (
    "45 CFR 164.514(b)(1) (expert determination); Sweeney 2002 (k-anonymity); "
    "Machanavajjhala et al. 2007 (l-diversity); Li et al. 2007 (t-closeness); "
    "ARX risk models (arx.deidentifier.org)"
)
_HIERARCHY_TYPES: dict[str, tuple[str, Callable[[pl.DataType], bool]]] = {
    "age": ("an integer column", lambda t: t.is_integer()),
    "zip": ("a text column", lambda t: t == pl.String),
    "date": ("a date or datetime column", lambda t: t == pl.Date or isinstance(t, pl.Datetime)),
    "categorical": ("a single-valued column", lambda t: not t.is_nested()),
}


def _with_exported_sensitive(
    phi: PhiFinding, config: ProjectConfig, record_exports: Mapping[str, RecordLevel]
) -> PhiFinding:
    """A record-level export that carries a declared sensitive column discloses it: the
    build is then PHI-derived (authorization rules apply), whatever the segment reads."""
    exported: set[str] = set()
    for settings in record_exports.values():
        sensitive = settings.anonymity.sensitive
        if sensitive is not None and sensitive in config.columns.sensitive:
            exported.add(sensitive)
    if not exported - set(phi.columns):
        return phi
    return replace(phi, columns=tuple(sorted(exported | set(phi.columns))))


@dataclass(frozen=True)
class _RecordExport:
    verdict: Verdict
    members: pl.DataFrame | None  # member_key + generalized attributes (+ sensitive); None: refused
    keys: np.ndarray  # sorted member keys of ``members``
    summary: dict[str, Any]  # the report's ``record_exports`` entry


def _record_export(
    cand: pl.DataFrame,
    kept_mask: np.ndarray,
    settings: RecordLevel,
    dest: Destination,
) -> _RecordExport:
    """Anonymize the released people's attributes for one record-level file export."""
    _check_record_columns(cand, settings, dest)
    model = settings.anonymity
    columns = [*settings.attributes, *([model.sensitive] if model.sensitive else [])]
    records = cand.select("member_key", *columns).filter(pl.Series(kept_mask))
    if records.get_column("member_key").n_unique() != records.height:
        # one person, several CRM records: count them once (else classes look bigger than
        # they are), keeping the row the hashed releases keep
        records = records.unique("member_key", keep="first", maintain_order=True)
    summary: dict[str, Any] = {
        "destination": dest.name,
        "attributes": dict(settings.attributes),
        "model": model.model_dump(),
        "identifiers": "none",
        "rows_in": records.height,
    }
    qis = {column: HIERARCHIES[name]() for column, name in settings.attributes.items()}
    try:
        result = anonymize(
            records,
            qis,
            k=model.k,
            l=model.l,
            t=model.t,
            sensitive=model.sensitive,
            suppression_limit=model.suppression_limit,
            keep=["member_key"],
        )
    except PolicyBlocked as exc:
        return _refused_export(exc, settings, dest, records.height, summary)
    return _released_export(result, settings, dest, summary)


def _check_record_columns(cand: pl.DataFrame, settings: RecordLevel, dest: Destination) -> None:
    """Each attribute is a contacts column that fits its hierarchy; the sensitive column
    holds single values."""
    model = settings.anonymity
    for column, name in settings.attributes.items():
        wanted, fits = _HIERARCHY_TYPES[name]
        if column not in cand.schema:
            raise ConfigError(
                f"[destinations.{dest.name}] attribute {column!r} is not a contacts column",
                "use a contacts column or the derived age",
            )
        if not fits(cand.schema[column]):
            raise ConfigError(
                f"[destinations.{dest.name}] attribute {column!r} ({cand.schema[column]}) "
                f"does not fit the {name!r} hierarchy, which needs {wanted}",
                "pick the hierarchy that fits the column",
            )
    if model.sensitive is not None and (
        model.sensitive not in cand.schema or cand.schema[model.sensitive].is_nested()
    ):
        raise ConfigError(
            f"[destinations.{dest.name}] anonymity.sensitive {model.sensitive!r} is not a "
            "single-valued contacts column",
            "name one column of single values (lists such as diagnosis codes can't be "
            "l-diverse per value)",
        )


def _model_text(settings: RecordLevel) -> str:
    """The anonymity model in short: ``k=10, l=2, t=0.2``."""
    model = settings.anonymity
    return (
        f"k={model.k}"
        + (f", l={model.l}" if model.l else "")
        + (f", t={model.t:g}" if model.t else "")
    )


def _refused_export(
    exc: PolicyBlocked,
    settings: RecordLevel,
    dest: Destination,
    rows_in: int,
    summary: dict[str, Any],
) -> _RecordExport:
    """The failed ``record-export`` verdict: no generalization meets the model."""
    model = settings.anonymity
    verdict = Verdict(
        id=RECORD_EXPORT_RULE,
        kind="k_anonymity",
        severity="block",
        passed=False,
        evidence={"rows_in": rows_in, "k": model.k},
        rationale=RECORD_EXPORT_RATIONALE,
        source=RECORD_EXPORT_SOURCE,
        destination=dest.name,
        detail=exc.what,
        public_detail=(
            f"no generalization of {', '.join(settings.attributes)} reaches "
            f"{_model_text(settings)} within the suppression limit of "
            f"{model.suppression_limit:.0%} — {exc.fix} "
            "(what was tried is in the compliance report)"
        ),
    )
    summary.update(status="refused", detail=exc.what)
    return _RecordExport(verdict, None, np.zeros(0, dtype=np.uint64), summary)


def _released_export(
    result: AnonymizationResult,
    settings: RecordLevel,
    dest: Destination,
    summary: dict[str, Any],
) -> _RecordExport:
    """The passed ``record-export`` verdict, with the generalized rows it releases."""
    model = settings.anonymity
    qis = list(settings.attributes)
    m, risk = result.metrics, result.risk
    members = result.frame.select(
        "member_key", *qis, *([model.sensitive] if model.sensitive else [])
    )
    levels = ", ".join(f"{q}={label}" for q, label in result.levels.items())
    detail = (
        f"{_model_text(settings)} met at {levels}: {m.rows_out} of {m.rows_in} rows released, "
        f"{m.suppressed} suppressed ({m.suppressed_fraction:.1%}); information loss "
        f"{m.information_loss:.3f}, discernibility {m.discernibility}, {m.classes} classes, "
        f"average class size {m.average_class_size:.2f}×k; re-identification risk: "
        f"prosecutor max {risk.prosecutor_max:.3f} / average {risk.prosecutor_average:.3f} "
        f"({risk.records_at_max_risk:.1%} of records at max), journalist max "
        f"{risk.journalist_max:.3f} / average {risk.journalist_average:.3f} "
        f"(population: {risk.population}), marketer {risk.marketer:.3f}"
    )
    evidence = {
        "k": model.k,
        "k_achieved": m.k_achieved,
        **({"l_achieved": m.l_achieved} if m.l_achieved is not None else {}),
        "rows_in": m.rows_in,
        "rows_out": m.rows_out,
        "suppressed": m.suppressed,
        "classes": m.classes,
        "nodes_evaluated": result.nodes_evaluated,
        "nodes_total": result.nodes_total,
    }
    verdict = Verdict(
        id=RECORD_EXPORT_RULE,
        kind="k_anonymity",
        severity="block",
        passed=True,
        evidence=evidence,
        rationale=RECORD_EXPORT_RATIONALE,
        source=RECORD_EXPORT_SOURCE,
        destination=dest.name,
        detail=detail,
    )
    summary.update(
        status="released",
        node={
            q: {"level": level, "label": result.levels[q]}
            for q, level in zip(qis, result.node, strict=True)
        },
        metrics=asdict(m),
        risk=asdict(risk),
        nodes_evaluated=result.nodes_evaluated,
        nodes_total=result.nodes_total,
        columns=[c for c in members.columns if c != "member_key"],
    )
    return _RecordExport(verdict, members, difference.sorted_keys(members["member_key"]), summary)


# ---------------------------------------------------------------------------------------
# Recording


def record(
    outcome: GateOutcome, conn: sqlite3.Connection, state_dir: Path | None = None
) -> list[str]:
    """Persist the releases: membership files first (atomic, 0600), then the rows in one
    transaction; files of a failed transaction are removed. Returns the release ids."""
    if outcome.blocked:
        raise InternalError("record() was called for a blocked gate outcome")
    base_dir = Path(state_dir or outcome.state_dir)
    folder = ensure_private_dir(base_dir / RELEASES_DIR)
    written: list[Path] = []
    rows = []
    try:
        for release in outcome.releases.values():
            require_release(release)
            if release.purpose != "release":
                raise InternalError("a removal-only release is never recorded")
            keys = difference.sorted_keys(release.members.get_column("member_key"))
            target = folder / f"{release.release_id}.parquet"
            if target.exists():
                raise InternalError(f"release {release.release_id} is already recorded")
            write_with(target, functools.partial(_write_keys, keys=keys), mode=0o600)
            written.append(target)
            rows.append(
                (
                    release.release_id,
                    release.build_id,
                    release.segment,
                    release.destination,
                    release.account,
                    int(keys.size),
                    f"{RELEASES_DIR}/{target.name}",
                    release.verdict_digest,
                    release.segment_digest,
                    release.policy_digest,
                    release.created_at,
                )
            )
        with transaction(conn):
            conn.executemany(
                "INSERT INTO releases(release_id, build_id, segment, destination, account, "
                "members, membership_path, verdict_digest, segment_digest, policy_digest, "
                "created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                rows,
            )
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return [r[0] for r in rows]


# ---------------------------------------------------------------------------------------
# Report document


def approval_block_report(
    *,
    build_id: str,
    segment: Segment,
    config: ProjectConfig,
    pack: Pack,
    as_of: dt.date,
    actor: str,
    reason: str,
    record_exports: Mapping[str, RecordLevel],
) -> dict[str, Any]:
    """The compliance report of a build stopped before the gate ran, because the segment
    has no valid approval for what it is now: no candidates were read, nothing released."""
    phi = _with_exported_sensitive(phi_finding(segment, config), config, record_exports)
    verdict = {
        "id": "approval",
        "kind": "approval",
        "severity": "block",
        "status": "fail",
        "passed": False,
        "destination": None,
        "evidence": {},
        "detail": reason,
        "checks": [],
        "rationale": (
            "Segments sent to ad platforms under this pack need a compliance officer's signed "
            "approval of their exact definition, the pack and their destinations."
        ),
        "source": "the pack's require_approval (or [approvers] require_approval)",
    }
    report = _report_head(build_id, segment, pack, as_of, actor, phi, [reason], config)
    return {
        **report,
        "approvers": sorted(config.approvers.keys),
        "figures": {"candidates": 0, "without_member_key": 0, "eligible_members": 0},
        "suppression_lists": [],
        "verdicts": [verdict],
        "difference_checks": [],
        "releases": [],
        "destinations": list(segment.destinations),
        "sign_off": _sign_off(
            "I have reviewed this report: the build was stopped before any candidate was read "
            "because the segment is not approved as it stands."
        ),
    }


def _report_head(
    build_id: str,
    segment: Segment,
    pack: Pack,
    as_of: dt.date,
    actor: str,
    phi: PhiFinding,
    reasons: list[str],
    config: ProjectConfig,
) -> dict[str, Any]:
    canonical = segment.canonical() if hasattr(segment, "canonical") else "{}"
    templates = config.report.templates
    return {
        "report_version": REPORT_VERSION,
        "kind": "audiences compliance report",
        "notice": CONFIDENTIAL,
        "build_id": build_id,
        "generated_at": utcnow(),
        "as_of": as_of.isoformat(),
        "actor": actor,
        "operator": config.project.operator,
        **({"report_templates": str(config.path(templates))} if templates else {}),
        "status": "blocked" if reasons else "released",
        "block_reasons": list(reasons),
        "pack": {
            "name": pack.name,
            "version": pack.version,
            "digest": pack.digest,
            "description": pack.description,
            "extends": list(pack.extends),
            "origin": pack.origin,
        },
        "segment": {
            "name": segment.name,
            "description": getattr(segment, "description", ""),
            "digest": segment.digest,
            "definition": json.loads(canonical),
            **_segment_for_people(segment),
            **phi.to_dict(),
        },
    }


def _segment_for_people(segment: Segment) -> dict[str, str]:
    """The segment's YAML as approved and its plain-English reading (docs/segments.md)."""
    if not isinstance(segment, Segment):
        return {}
    text, origin = definition_yaml(segment)
    return {"yaml": text, "yaml_source": origin, "reading": reading(segment)}


def _verdict_entry(pack: Pack, verdict: Verdict) -> dict[str, Any]:
    """A verdict as the report holds it; a jurisdiction pack's rule also names its pack
    and jurisdictions (the report's "By jurisdiction" section groups by them)."""
    entry = verdict.to_dict()
    rule = next((r for r in pack.rules if r.id == verdict.id and r.jurisdictions), None)
    if rule is not None:
        entry |= {"pack": rule.pack, "jurisdictions": list(rule.jurisdictions)}
    return entry


def _sign_off(statement: str) -> dict[str, Any]:
    return {"statement": statement, "reviewer": None, "role": None, "date": None, "signature": None}


def _report(
    inp: GateInput,
    phi: PhiFinding,
    verdicts: list[Verdict],
    blocked: bool,
    reasons: list[str],
    releases: dict[str, Release],
    diff_checks: list[dict[str, Any]],
    no_key: int,
    eligible: int,
) -> dict[str, Any]:
    head = _report_head(
        inp.build_id, inp.segment, inp.pack, inp.as_of, inp.actor, phi, reasons, inp.config
    )
    head["status"] = "blocked" if blocked else "released"
    return {
        **head,
        "figures": {
            "candidates": inp.candidates.height,
            "without_member_key": no_key,
            "eligible_members": eligible,
        },
        "suppression_lists": [
            {"path": str(s.path), "column": s.column, "kind": s.kind}
            for s in inp.pack.suppression_lists
        ],
        "verdicts": [_verdict_entry(inp.pack, v) for v in verdicts],
        "difference_checks": diff_checks,
        "releases": [r.describe() for r in releases.values()],
        "destinations": list(inp.destinations),
        "sign_off": _sign_off(
            "I have reviewed the rules, evidence and releases in this report and approve "
            "the releases listed."
        ),
    }


__all__ = [
    "GateInput",
    "GateOutcome",
    "RemovalInput",
    "RemovalOutcome",
    "destination_of",
    "evaluate",
    "forced_removals",
    "record",
    "sale_basis",
    "sale_destinations",
    "takedown_release",
    "verdict_digest",
]


def _write_keys(tmp: Path, *, keys: np.ndarray) -> None:
    difference.write_membership(tmp, keys)
