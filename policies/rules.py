"""The rule kinds a policy pack can use, their parameters, and their verdicts.

Each rule kind is a small unit: a frozen pydantic model of its parameters and a
function that returns a :class:`Verdict`. There are two scopes:

* **filter** rules (``consent``, ``suppression``, ``minors``, ``phi_authorization`` in
  ``authorized_only`` mode) look at every candidate and return the boolean mask of rows
  they exclude — vectorized polars, no per-row Python. They pass; their evidence says how
  many people they removed.
* **destination** rules (``sensitive_destination``, ``opaque_name``, ``min_size``,
  ``difference``) judge what would be released to one destination and fail (block) or
  warn.

Evidence holds counts and names of columns / releases only — never a value from a row.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from audiences.core.errors import ConfigError, DataError
from audiences.core.records import pick
from audiences.crm.consent import column as _column
from audiences.crm.consent import consent_denied, consent_signal, truthy
from audiences.crm.distinct import duplicated
from audiences.segments.model import classify_field

if TYPE_CHECKING:
    from audiences.core.config import ProjectConfig
    from policies.suppression import SuppressionSet


class Params(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ConsentParams(Params):
    require_opt_in: bool
    exclude_do_not_contact: bool
    exclude_deceased: bool
    # A person who said no to personalized ads is in no ad audience (and Customer Match
    # refuses DENIED consent outright).
    exclude_ad_personalization_denied: bool = True
    # An opt-out on one CRM record of a person applies to their duplicate records too
    # (records sharing a normalized email, phone or name and postal code, CRM-wide, and
    # every record of the gate's person): platforms match on any key.
    exclude_duplicates_of_opt_outs: bool = True


# Set by the build: True where another CRM record with the same email, phone or name and
# postal code opted out.
DUPLICATE_OF_OPT_OUT = "__duplicate_of_opt_out"


class SuppressionListParam(Params):
    path: str
    column: str
    kind: Literal["email", "phone", "external_id"]


class SuppressionParams(Params):
    lists: tuple[SuppressionListParam, ...] = ()


class MinorsParams(Params):
    min_age: int = Field(ge=13, le=30)
    unknown_age: Literal["keep", "exclude"]


class PhiParams(Params):
    mode: Literal["authorized_only", "block"]


# Destination kinds that upload to one Google Ads account: a rule naming one names both.
GOOGLE_KINDS = ("google_ads", "google_data_manager")


def rule_kinds_of(kind: str) -> tuple[str, ...]:
    """The destination kinds a pack's rule may name for ``kind`` (itself, or its platform)."""
    return GOOGLE_KINDS if kind in GOOGLE_KINDS else (kind,)


class SensitiveDestinationParams(Params):
    kinds: tuple[str, ...] = Field(min_length=1)


class OpaqueNameParams(Params):
    prefix: str = Field(pattern=r"^[a-z]{2,6}$")
    length: int = Field(ge=8, le=24)


class MinSizeParams(Params):
    k: int = Field(ge=2)
    platform_minimums: dict[str, int]
    destination_minimums: dict[str, int] = Field(default_factory=dict)


class DifferenceParams(Params):
    k_diff: int = Field(ge=2)
    on_small_change: Literal["block", "hold"]


Scope = Literal["filter", "destination"]


@dataclass(frozen=True)
class RuleKind:
    name: str
    scope: Scope
    params: type[Params]
    summary: str


RULE_KINDS: dict[str, RuleKind] = {
    k.name: k
    for k in (
        RuleKind("consent", "filter", ConsentParams, "marketing opt-in, do-not-contact, deceased"),
        RuleKind("suppression", "filter", SuppressionParams, "suppression lists (hashed match)"),
        RuleKind("minors", "filter", MinorsParams, "exclude people under min_age"),
        RuleKind(
            "phi_authorization", "filter", PhiParams, "PHI-derived segments need authorization"
        ),
        RuleKind(
            "sensitive_destination",
            "destination",
            SensitiveDestinationParams,
            "refuse PHI-derived segments for destinations that forbid health targeting",
        ),
        RuleKind("opaque_name", "destination", OpaqueNameParams, "opaque audience names"),
        RuleKind("min_size", "destination", MinSizeParams, "minimum release size k"),
        RuleKind("difference", "destination", DifferenceParams, "difference protection"),
    )
}


# ---------------------------------------------------------------------------------------
# Verdicts


@dataclass(frozen=True)
class Verdict:
    """One rule's judgement (for one destination where the rule is per destination)."""

    id: str
    kind: str
    severity: str  # block | warn
    passed: bool
    evidence: Mapping[str, int]
    rationale: str
    source: str
    destination: str | None = None
    detail: str = ""
    # The same reason without exact figures, for marketers (CLI output, exit messages):
    # an exact count below k, or an exact difference, is what an attacker probes for.
    public_detail: str | None = None
    checks: tuple[Mapping[str, Any], ...] = ()  # difference comparisons (ids, dates, counts)
    excluded: pl.Series | None = field(default=None, compare=False, repr=False)

    @property
    def status(self) -> str:
        if self.passed:
            return "pass"
        return "warn" if self.severity == "warn" else "fail"

    @property
    def blocking(self) -> bool:
        return not self.passed and self.severity == "block"

    def reason(self) -> str:
        where = f" [{self.destination}]" if self.destination else ""
        return f"{self.id}{where}: {self.detail}"

    def public_reason(self) -> str:
        """The reason with no exact figure in it (what the CLI shows a marketer)."""
        where = f" [{self.destination}]" if self.destination else ""
        return f"{self.id}{where}: {self.public_detail or self.detail}"

    def to_dict(self) -> dict[str, Any]:
        out = pick(self, "id kind severity status passed destination")
        out["evidence"] = {k: int(v) for k, v in self.evidence.items()}
        out |= {"detail": self.detail, "checks": [dict(c) for c in self.checks]}
        return out | pick(self, "rationale source")


def _verdict(
    rule: Rule, passed: bool, evidence: Mapping[str, int], detail: str, **kw: Any
) -> Verdict:
    return Verdict(
        id=rule.id,
        kind=rule.kind,
        severity=rule.severity,
        passed=passed,
        evidence=dict(evidence),
        rationale=rule.rationale,
        source=rule.source,
        detail=detail,
        **kw,
    )


# ---------------------------------------------------------------------------------------
# Context


@dataclass(frozen=True)
class PhiFinding:
    """Whether a segment is PHI-derived, and which names (never values) made it so."""

    columns: tuple[str, ...]
    derived_fields: tuple[str, ...]
    event_types: tuple[str, ...]
    event_columns: tuple[str, ...]

    @property
    def derived(self) -> bool:
        return bool(self.columns or self.derived_fields or self.event_types or self.event_columns)

    def describe(self) -> str:
        parts = [
            f"{label} {', '.join(names)}"
            for label, names in (
                ("sensitive columns", self.columns),
                ("derived fields", self.derived_fields),
                ("sensitive event types", self.event_types),
                ("sensitive event columns", self.event_columns),
            )
            if names
        ]
        return "; ".join(parts) if parts else "no sensitive data reached"

    def to_dict(self) -> dict[str, Any]:
        return {
            "phi_derived": self.derived,
            "columns": list(self.columns),
            "derived_fields": list(self.derived_fields),
            "event_types": list(self.event_types),
            "event_columns": list(self.event_columns),
        }


_SEPARATORS = re.compile(r"[\s_.\-]+")


def sensitivity_key(name: str) -> str:
    """How sensitive names and values are compared: case-folded, trimmed, with ``_ - .``
    and white space removed — ``Portal_Login``, ``portal-login`` and ``PORTAL LOGIN`` are
    one event type (docs/policy-rules.md, "Sensitivity matching")."""
    return _SEPARATORS.sub("", name.casefold().strip())


def _matching(names: Iterable[str], sensitive: Iterable[str]) -> tuple[str, ...]:
    """The ``names`` (as the segment spells them) that match a sensitive name."""
    keys = {sensitivity_key(s) for s in sensitive}
    return tuple(sorted({n for n in names if sensitivity_key(n) in keys}))


def phi_finding(segment: Any, config: ProjectConfig) -> PhiFinding:
    """A segment is PHI-derived if its definition reaches sensitive data of any kind."""
    try:
        refs = segment.references(birth_date=config.identity.birth_date)
    except TypeError:  # a segment-like object whose references() takes no arguments
        refs = segment.references()
    # Names `init --from` left for the user to classify count as sensitive until then.
    contact_columns = [*config.columns.sensitive, *config.columns.unclassified]
    sensitive = {sensitivity_key(c) for c in contact_columns}
    events = config.sources.events
    sensitive_types = [*events.sensitive_types, *events.unclassified_types] if events else []
    sensitive_event_columns = (
        [*events.sensitive_columns, *events.unclassified_columns] if events else []
    )
    type_keys = {sensitivity_key(t) for t in sensitive_types}
    derived = []
    for name in refs.derived_fields:
        kind, base = classify_field(name)
        if (kind == "days_since_column" and sensitivity_key(base) in sensitive) or (
            kind == "days_since_last_event" and sensitivity_key(base) in type_keys
        ):
            derived.append(name)
    return PhiFinding(
        columns=_matching(refs.contact_columns, contact_columns),
        derived_fields=tuple(sorted(derived)),
        event_types=_matching(refs.event_types, sensitive_types),
        event_columns=_matching(refs.event_columns, sensitive_event_columns),
    )


# Column names that suggest a value derived from clinical data (a care-program flag, a
# condition cohort, a lab result): `validate` warns when such a column is undeclared.
DERIVED_HINTS = (
    "care",
    "program",
    "condition",
    "diagnos",
    "dx",
    "icd",
    "medication",
    "rx",
    "lab",
    "clinical",
    "disease",
    "chronic",
    "treatment",
    "therapy",
    "procedure",
    "pregnan",
    "cohort",
    "risk",
)


def classified_columns(config: ProjectConfig) -> set[str]:
    """Sensitivity keys of the contacts columns whose sensitivity the config states:
    ``[columns]`` sensitive / not_sensitive / quasi_identifiers, and the columns mapped as
    the contact id, identity fields and consent facts."""
    names = [
        *config.columns.sensitive,
        *config.columns.not_sensitive,
        *config.columns.quasi_identifiers,
        config.sources.contacts.id,
        *(v for v in config.identity.model_dump().values() if isinstance(v, str)),
        *(v for v in config.consent.model_dump().values() if isinstance(v, str)),
    ]
    return {sensitivity_key(n) for n in names}


def unclassified_columns(segments: Iterable[Any], config: ProjectConfig) -> list[str]:
    """Contacts columns the segments read that the config classifies neither way."""
    known = classified_columns(config)
    used: set[str] = set()
    for segment in segments:
        try:
            refs = segment.references(birth_date=config.identity.birth_date)
        except TypeError:
            refs = segment.references()
        used |= set(refs.contact_columns)
    return sorted(c for c in used if sensitivity_key(c) not in known)


def requires_classification(pack_name: str, extends: Iterable[str]) -> bool:
    """Packs under which every contacts column a segment reads must be classified."""
    return "hipaa-marketing" in (pack_name, *extends)


def require_classified(segments: Iterable[Any], config: ProjectConfig, pack: Any) -> None:
    """Under hipaa-marketing, refuse segments reading unclassified contacts columns: a
    column derived from diagnoses (a care-program flag) would otherwise not count as PHI."""
    if not requires_classification(pack.name, pack.extends):
        return
    missing = unclassified_columns(segments, config)
    if missing:
        listed = ", ".join(f'"{c}"' for c in missing)
        raise ConfigError(
            f"under {pack.name}, contacts column(s) {listed} used by a segment are classified "
            "neither sensitive nor not sensitive",
            f"add to audiences.toml under [columns] either `sensitive = [..., {listed}]` "
            f"(health data or derived from it) or `not_sensitive = [{listed}]`",
        )


@dataclass(frozen=True)
class Destination:
    """A destination as the rules see it."""

    name: str
    kind: str
    account: str


@dataclass(frozen=True)
class FilterContext:
    config: ProjectConfig
    candidates: pl.DataFrame
    as_of: dt.date
    phi: PhiFinding
    suppression: SuppressionSet
    # the segment judged (jurisdiction rules read the names its definition reaches)
    segment: Any = None
    # the destinations of this release whose transfer is a sale (``basis = "sale"``, or an
    # account another sale destination uploads to): sale_authorization judges for them
    sale_destinations: tuple[str, ...] = ()
    # coarse link keys an earlier step computed for these candidates (the duplicate-of-
    # opt-out flag's, ``linkage.CoarseMemo``): :attr:`persons` takes them where they are
    # of these very rows instead of keying the candidates again
    coarse_memo: Any = None

    def __post_init__(self) -> None:
        # Protective rules judge people on the day data leaves, never a caller's date
        # (docs/policy-rules.md, "What the gate defends against").
        from audiences.core import clock

        clock.release_day(self.as_of, what="the policy gate")

    @cached_property
    def jurisdictions(self) -> pl.Series:
        """Each candidate's jurisdictions (``List[String]``, empty where unknown): every
        jurisdiction rule reads them; computed once per gate."""
        from audiences.crm.jurisdiction import jurisdictions

        return jurisdictions(self.candidates, self.config)

    @cached_property
    def persons(self) -> pl.Series | None:
        """The person of each candidate record (``person_keys``: records sharing a
        normalized email or phone, a name with a postal code that no e-mail or phone
        tells apart, or — for a record with none of those — a name with a city and state,
        are one person); None without the CRM id column.
        Computed once per gate."""
        from audiences.crm.linkage import person_keys

        cid = self.config.sources.contacts.id
        if cid not in self.candidates.columns:
            return None
        return person_keys(self.candidates, self.config, by=cid, memo=self.coarse_memo)

    @cached_property
    def persons_shared(self) -> pl.Series | None:
        """True for a candidate record whose person has another candidate record (of
        :attr:`persons`); None without the CRM id column. Computed once per gate."""
        persons = self.persons
        return None if persons is None else duplicated(persons)


# ---------------------------------------------------------------------------------------
# Column helpers (vectorized)


def as_date(candidates: pl.DataFrame, name: str, role: str) -> pl.Expr:
    expr = _column(candidates, name, role)
    dtype = candidates.schema[name]
    if dtype == pl.Date:
        return expr
    if isinstance(dtype, pl.Datetime):
        return expr.dt.date()
    return (
        expr.cast(pl.String)
        .str.strip_chars()
        .str.slice(0, 10)
        .str.to_date("%Y-%m-%d", strict=False)
    )


def _count(candidates: pl.DataFrame, mask: pl.Series) -> int:
    return int(mask.sum()) if candidates.height else 0


def _mask(candidates: pl.DataFrame, expr: pl.Expr) -> pl.Series:
    if candidates.height == 0:
        return pl.Series("excluded", [], dtype=pl.Boolean)
    # with_columns broadcasts a literal to every row (select would give one row)
    return (
        candidates.with_columns(expr.fill_null(False).alias("__excluded"))
        .get_column("__excluded")
        .alias("excluded")
    )


# ---------------------------------------------------------------------------------------
# Filter rules


def consent(rule: Rule, ctx: FilterContext) -> Verdict:
    p: ConsentParams = rule.params  # type: ignore[assignment]
    c = ctx.config.consent
    df = ctx.candidates
    parts: dict[str, pl.Expr] = {}
    skipped: list[str] = []
    if p.require_opt_in:
        if c.marketing_opt_in is None:  # load_pack refuses this; never silently skip
            raise DataError(
                "the consent rule requires marketing opt-in but [consent] marketing_opt_in "
                "is not set",
                "set [consent] marketing_opt_in in audiences.toml",
            )
        parts["no_opt_in"] = ~truthy(df, c.marketing_opt_in, "marketing_opt_in").fill_null(False)
    for flag, role, column in (
        (p.exclude_do_not_contact, "do_not_contact", c.do_not_contact),
        (p.exclude_deceased, "deceased", c.deceased),
    ):
        if not flag:
            continue
        if column is None:
            skipped.append(role)
            continue
        parts[role] = truthy(df, column, role).fill_null(False)
    if p.exclude_ad_personalization_denied and c.ad_personalization is not None:
        _column(df, c.ad_personalization, "ad_personalization")  # names a missing column
        parts["ad_personalization_denied"] = consent_denied(df, c.ad_personalization)
    if p.exclude_duplicates_of_opt_outs and DUPLICATE_OF_OPT_OUT in df.columns:
        parts["duplicate_of_opt_out"] = pl.col(DUPLICATE_OF_OPT_OUT).fill_null(False)
    if p.exclude_duplicates_of_opt_outs and parts:
        same = _same_person_opted_out(ctx, [e for n, e in parts.items() if n in _OWN_OPT_OUTS])
        if same is not None:
            dup = parts.get("duplicate_of_opt_out", pl.lit(False))
            parts["duplicate_of_opt_out"] = dup | pl.lit(same)
    evidence, mask = _flagged(df, parts)
    detail = f"{evidence['excluded']} of {df.height} candidates excluded"
    if skipped:
        detail += f"; no column configured for {', '.join(skipped)} (nothing checked)"
    return _verdict(rule, True, evidence, detail, excluded=mask)


_OWN_OPT_OUTS = ("no_opt_in", "do_not_contact", "deceased", "ad_personalization_denied")


def _same_person_opted_out(ctx: FilterContext, own: list[pl.Expr]) -> pl.Series | None:
    """True for a candidate record another record of the same gate person opted out on
    (the gate's people: records linked by e-mail, phone, a name with a postal code that
    no e-mail or phone tells apart, or a name with a city and state for a record with none
    of those, ``person_keys``, transitively); None when no record is
    linked to another. The CRM-wide linkage (``DUPLICATE_OF_OPT_OUT``) compares each
    candidate with every opted-out record one hop away; this follows the gate's people
    (a link through a third record, a name and ZIP the namesake rule keeps)."""
    df = ctx.candidates
    if not own or df.height < 2:
        return None
    persons, shared = ctx.persons, ctx.persons_shared
    if persons is None or shared is None:
        return None
    # (a person of one record has no other record)
    if not shared.any():
        return None
    rows = shared.arg_true()
    same = (
        df[rows]
        .select(pl.any_horizontal(e.fill_null(False) for e in own).alias("o"))
        .with_columns(persons.gather(rows).alias("p"))
        .select((pl.col("o").any().over("p") & ~pl.col("o")).alias("same"))
        .to_series()
    )
    return pl.repeat(False, df.height, eager=True).alias("same").scatter(rows, same)


def suppression(rule: Rule, ctx: FilterContext) -> Verdict:
    df = ctx.candidates
    mask = ctx.suppression.mask(df, ctx.config.identity)
    n = _count(df, mask)
    evidence = {
        "candidates": df.height,
        "lists": len(ctx.suppression.entries),
        "list_entries": sum(ctx.suppression.entries.values()),
        "excluded": n,
    }
    detail = f"{n} of {df.height} candidates on a suppression list"
    return _verdict(rule, True, evidence, detail, excluded=mask)


def minors(rule: Rule, ctx: FilterContext) -> Verdict:
    p: MinorsParams = rule.params  # type: ignore[assignment]
    df = ctx.candidates
    if "age" not in df.schema:
        raise DataError("the candidates have no 'age' column", "this is a bug in the build")
    age = pl.col("age")
    under = age < p.min_age
    unknown = age.is_null()
    counts = df.select(
        under.fill_null(False).sum().alias("under_age"), unknown.sum().alias("unknown_age")
    ).row(0, named=True)
    expr = under | unknown if p.unknown_age == "exclude" else under
    mask = _mask(df, expr)
    evidence = {
        "candidates": df.height,
        "under_age": int(counts["under_age"] or 0),
        "unknown_age": int(counts["unknown_age"] or 0),
        "excluded": _count(df, mask),
    }
    detail = f"{evidence['excluded']} excluded: under {p.min_age}" + (
        " or age unknown" if p.unknown_age == "exclude" else ""
    )
    return _verdict(rule, True, evidence, detail, excluded=mask)


def valid_authorization(ctx: FilterContext) -> pl.Expr | None:
    """True where a HIPAA marketing authorization is in force at ``as_of``."""
    return _in_force(ctx, "hipaa_authorization")


def _in_force(ctx: FilterContext, role: str, *, longest: str | None = None) -> pl.Expr | None:
    """True where the authorization whose [consent] columns are ``<role>_date``,
    ``<role>_expires`` and ``<role>_revoked`` is in force at ``as_of``: signed on or before
    it, not expired, not revoked on or before it. ``longest`` (a polars duration such as
    ``1y``) caps its life from the day it was signed, whatever the expiry column says."""
    c = ctx.config.consent
    date_column = getattr(c, f"{role}_date")
    if date_column is None:
        return None
    df = ctx.candidates
    day = pl.lit(ctx.as_of, dtype=pl.Date)
    signed = as_date(df, date_column, f"{role}_date")
    valid = signed.is_not_null() & (signed <= day)
    if longest is not None:
        valid = valid & (signed.dt.offset_by(longest) > day)
    expires_column = getattr(c, f"{role}_expires")
    if expires_column is not None:
        expires = as_date(df, expires_column, f"{role}_expires")
        valid = valid & (expires.is_null() | (expires > day))
    revoked_column = getattr(c, f"{role}_revoked")
    if revoked_column is not None:
        revoked = as_date(df, revoked_column, f"{role}_revoked")
        valid = valid & (revoked.is_null() | (revoked > day))
    return valid.fill_null(False)


def phi_authorization(rule: Rule, ctx: FilterContext) -> Verdict:
    p: PhiParams = rule.params  # type: ignore[assignment]
    df = ctx.candidates
    if not ctx.phi.derived:
        return _verdict(
            rule,
            True,
            {"candidates": df.height, "phi_derived": 0, "excluded": 0},
            "segment is not PHI-derived (" + ctx.phi.describe() + ")",
            excluded=_mask(df, pl.lit(False)),
        )
    valid = valid_authorization(ctx)
    lacking_expr = pl.lit(True) if valid is None else ~valid
    lacking = _mask(df, lacking_expr)
    n = _count(df, lacking)
    evidence = {"candidates": df.height, "phi_derived": 1, "lacking_authorization": n}
    why = f"PHI-derived segment ({ctx.phi.describe()})"
    no_column = " — [consent] hipaa_authorization_date is not set, so nobody is authorized"
    if p.mode == "block":
        evidence["excluded"] = 0
        return _verdict(
            rule,
            False,
            evidence,
            f"{why}: the pack blocks PHI-derived segments",
            excluded=_mask(df, pl.lit(False)),
        )
    evidence["excluded"] = n
    detail = f"{why}: released only to the {df.height - n} members with a valid authorization"
    return _verdict(
        rule, True, evidence, detail + (no_column if valid is None else ""), excluded=lacking
    )


FILTERS: dict[str, Callable[[Rule, FilterContext], Verdict]] = {
    "consent": consent,
    "suppression": suppression,
    "minors": minors,
    "phi_authorization": phi_authorization,
}


# ---------------------------------------------------------------------------------------
# Destination rules (difference lives in policies.difference; the gate calls it)


def sensitive_destination(rule: Rule, dest: Destination, phi: PhiFinding) -> Verdict:
    p: SensitiveDestinationParams = rule.params  # type: ignore[assignment]
    applies = any(kind in p.kinds for kind in rule_kinds_of(dest.kind))
    refused = applies and phi.derived
    evidence = {"phi_derived": int(phi.derived), "applies": int(applies)}
    if refused:
        detail = (
            f"{dest.kind} forbids health-based customer lists and this segment is PHI-derived "
            f"({phi.describe()})"
        )
    elif applies:
        detail = f"segment is not PHI-derived; {dest.kind} may receive it"
    else:
        detail = f"does not apply to destination kind {dest.kind}"
    return _verdict(rule, not refused, evidence, detail, destination=dest.name)


_WORD = re.compile(r"[^\W_]+", re.UNICODE)
MIN_WORD = 3


def segment_words(segment: Any) -> frozenset[str]:
    """Every word (3+ letters/digits, lowercased) of the segment's name, description and
    definition values — what must never show in a name sent to a platform."""
    texts: list[str] = [str(getattr(segment, "name", "")), str(getattr(segment, "description", ""))]

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list | tuple):
            for v in value:
                walk(v)
        elif value is not None and not isinstance(value, bool):
            texts.append(str(value))

    dump = getattr(segment, "model_dump", None)
    if callable(dump):
        walk(dump(mode="json"))
    words: set[str] = set()
    for text in texts:
        words.update(w for w in _WORD.findall(text.lower()) if len(w) >= MIN_WORD)
    return frozenset(words)


def leaked_words(name: str, words: frozenset[str]) -> list[str]:
    """Words of the segment that appear anywhere inside ``name`` (substring match)."""
    lowered = name.lower()
    pieces = {
        lowered[i:j] for i in range(len(lowered)) for j in range(i + MIN_WORD, len(lowered) + 1)
    }
    return sorted(pieces & words)


def make_opaque_name(
    segment_name: str, salt: bytes, params: OpaqueNameParams, words: frozenset[str]
) -> str:
    """``<prefix>-<hex>`` from an HMAC of the segment name under the project salt.

    Stable for a segment (so the platform audience keeps its name across builds) and
    re-drawn deterministically until no word of the segment appears in it.
    """
    for attempt in range(1_000):
        mac = hmac.new(salt, f"opaque-name\0{segment_name}\0{attempt}".encode(), hashlib.sha256)
        name = f"{params.prefix}-{mac.hexdigest()[: params.length]}"
        if not leaked_words(name, words):
            return name
    return name  # the verdict will refuse it


def opaque_name(rule: Rule, dest: Destination, name: str, words: frozenset[str]) -> Verdict:
    p: OpaqueNameParams = rule.params  # type: ignore[assignment]
    leaks = leaked_words(name, words)
    shaped = re.fullmatch(rf"{p.prefix}-[0-9a-f]{{{p.length}}}", name) is not None
    passed = shaped and not leaks
    evidence = {"words_checked": len(words), "words_found": len(leaks)}
    if passed:
        detail = f"platform name and description will be {name!r}; no segment word in it"
    elif leaks:
        detail = (
            f"the opaque name would contain {len(leaks)} word(s) of the segment — change the "
            "opaque_name prefix"
        )
    else:
        detail = "the opaque name does not have the required shape"
    return _verdict(rule, passed, evidence, detail, destination=dest.name)


def size_threshold(params: MinSizeParams, dest: Destination) -> dict[str, int]:
    platform = max(params.platform_minimums.get(k, 0) for k in rule_kinds_of(dest.kind))
    own = params.destination_minimums.get(dest.name, 0)
    return {
        "pack_k": params.k,
        "platform_minimum": platform,
        "destination_minimum": own,
        "threshold": max(params.k, platform, own),
    }


def min_size(rule: Rule, dest: Destination, members: int) -> Verdict:
    p: MinSizeParams = rule.params  # type: ignore[assignment]
    figures = size_threshold(p, dest)
    passed = members >= figures["threshold"]
    evidence = {"members": members, **figures}
    if passed:
        detail = f"{members} members ≥ minimum {figures['threshold']}"
    else:
        detail = (
            f"{members} members is below the minimum of {figures['threshold']} for "
            f"{dest.kind} — widen the segment"
        )
    public = (
        None
        if passed
        else f"fewer members than the minimum of {figures['threshold']} for {dest.kind} — "
        "widen the segment (exact figures are in the compliance report)"
    )
    return _verdict(rule, passed, evidence, detail, destination=dest.name, public_detail=public)


__all__ = [
    "FILTERS",
    "RULE_KINDS",
    "Destination",
    "FilterContext",
    "PhiFinding",
    "RuleKind",
    "Verdict",
    "phi_finding",
    "segment_words",
]


@dataclass(frozen=True)
class Rule:
    """A resolved rule: kind, severity and validated parameters."""

    id: str
    kind: str
    severity: str
    params: Params
    rationale: str
    source: str
    # a jurisdiction pack's rule applies to the people of these jurisdictions only
    # (and to people whose jurisdiction is unknown); empty: to everyone
    jurisdictions: tuple[str, ...] = ()
    # the jurisdiction pack it came from (reports group by it; not part of the digest)
    pack: str = field(default="", compare=False)

    @property
    def scope(self) -> str:
        return RULE_KINDS[self.kind].scope

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "rule": self.kind,
            "severity": self.severity,
            "params": self.params.model_dump(mode="json"),
            "rationale": self.rationale,
            "source": self.source,
            **({"jurisdictions": list(self.jurisdictions)} if self.jurisdictions else {}),
        }


# ---------------------------------------------------------------------------------------
# Jurisdiction rules (wa-mhmda, gdpr-health, ccpa-sensitive) and jurisdiction scoping


class HealthDataConsentParams(Params):
    # the [consent] key naming the CRM column that records the consent
    consent: Literal["share_health_data", "explicit_health_marketing"]
    # columns / event types that reveal or infer health; unset: the project's sensitive
    # columns ([columns] sensitive) and sensitive event types ([sources.events])
    health_columns: tuple[str, ...] | None = None
    health_event_types: tuple[str, ...] | None = None


class HealthGeofenceParams(Params):
    # a segment field is location-based when a word of its name (split at _ - . and
    # spaces) starts with one of these
    field_words: tuple[str, ...] = Field(
        default=(
            "geofence",
            "geo",
            "distance",
            "near",
            "radius",
            "proximity",
            "latitude",
            "longitude",
        ),
        min_length=1,
    )


class AdConsentSignalsParams(Params):
    require: tuple[Literal["ad_user_data", "ad_personalization"], ...] = Field(
        default=("ad_user_data", "ad_personalization"), min_length=1
    )


class SaleAuthorizationParams(Params):
    # as health_data_consent's: the names that make a segment health-derived
    health_columns: tuple[str, ...] | None = None
    health_event_types: tuple[str, ...] | None = None


# RCW 19.373.070(2)(h): a valid authorization to sell expires one year after signing.
SALE_AUTHORIZATION_LIFE = "1y"


class SensitivePiOptOutParams(Params):
    honour: tuple[Literal["limit_sensitive_pi", "opt_out_of_sharing"], ...] = Field(
        default=("limit_sensitive_pi", "opt_out_of_sharing"), min_length=1
    )


RULE_KINDS.update(
    {
        k.name: k
        for k in (
            RuleKind(
                "health_data_consent",
                "filter",
                HealthDataConsentParams,
                "health-derived segments need a recorded consent (to share / explicit)",
            ),
            RuleKind(
                "health_geofence",
                "filter",
                HealthGeofenceParams,
                "refuse location-based conditions (geofences near health facilities)",
            ),
            RuleKind(
                "ad_consent_signals",
                "filter",
                AdConsentSignalsParams,
                "people need the ad consent signals GRANTED",
            ),
            RuleKind(
                "sale_authorization",
                "filter",
                SaleAuthorizationParams,
                "health-derived releases to sale-basis destinations need a signed "
                "authorization to sell (per destination)",
            ),
            RuleKind(
                "sensitive_pi_opt_out",
                "filter",
                SensitivePiOptOutParams,
                "honour limit-use-of-sensitive-PI and opt-out-of-sharing (GPC) requests",
            ),
        )
    }
)


def _references(ctx: FilterContext) -> Any | None:
    """The names the segment's definition reaches (None when the gate gave no segment)."""
    segment = ctx.segment
    if segment is None:
        return None
    try:
        return segment.references(birth_date=ctx.config.identity.birth_date)
    except TypeError:  # a segment-like object whose references() takes no arguments
        return segment.references()


def _referenced_names(refs: Any) -> list[str]:
    names: set[str] = set()
    for attr in ("contact_columns", "derived_fields", "event_types", "event_columns"):
        names |= set(getattr(refs, attr, ()) or ())
    return sorted(names)


def health_inferring(
    p: HealthDataConsentParams | SaleAuthorizationParams, ctx: FilterContext
) -> list[str]:
    """The health-inferring names the segment reaches (and ``phi`` when PHI-derived)."""
    config = ctx.config
    columns = set(p.health_columns if p.health_columns is not None else config.columns.sensitive)
    events = config.sources.events
    default_types = events.sensitive_types if events else []
    types = set(p.health_event_types if p.health_event_types is not None else default_types)
    refs = _references(ctx)
    found: set[str] = set()
    if refs is not None:
        found |= set(refs.contact_columns) & columns
        found |= set(refs.event_types) & types
        for name in refs.derived_fields:
            kind, base = classify_field(name)
            if (kind == "days_since_column" and base in columns) or (
                kind == "days_since_last_event" and base in types
            ):
                found.add(name)
    return sorted(found) + (["phi"] if ctx.phi.derived else [])


def health_data_consent(rule: Rule, ctx: FilterContext) -> Verdict:
    p: HealthDataConsentParams = rule.params  # type: ignore[assignment]
    df = ctx.candidates
    names = health_inferring(p, ctx)
    if not names:
        return _verdict(
            rule,
            True,
            {"candidates": df.height, "health_derived": 0, "lacking_consent": 0, "excluded": 0},
            "segment reaches no health data and infers no health",
            excluded=_mask(df, pl.lit(False)),
        )
    column = getattr(ctx.config.consent, p.consent)
    if column is None:
        lacking = _mask(df, pl.lit(True))
        note = f" — [consent] {p.consent} is not set, so nobody has consented"
    else:
        _column(df, column, p.consent)  # names a missing column
        # granted: true / yes / 1 / granted; withdrawn, denied or unknown is no consent
        words = ctx.config.consent.vocabulary(p.consent)  # the column's own words, if any
        lacking = _mask(df, consent_signal(df, column, p.consent, words) != "GRANTED")
        note = ""
    n = _count(df, lacking)
    evidence = {
        "candidates": df.height,
        "health_derived": 1,
        "lacking_consent": n,
        "excluded": n,
    }
    detail = (
        f"health-derived segment ({len(names)} health-inferring name(s)): released only to "
        f"people with a recorded {p.consent.replace('_', ' ')} consent" + note
    )
    return _verdict(rule, True, evidence, detail, excluded=lacking)


def sale_authorization(rule: Rule, ctx: FilterContext) -> Verdict:
    """The people a release to a sale-basis destination may not carry: for a
    health-derived segment, everyone without a signed authorization to sell in force at
    ``as_of``. Its mask is applied to the sale-basis destinations only (the gate routes
    it); the share-basis destinations of the same release are judged by the consent to
    share alone."""
    p: SaleAuthorizationParams = rule.params  # type: ignore[assignment]
    df = ctx.candidates
    names = health_inferring(p, ctx)
    evidence = {
        "candidates": df.height,
        "sale_destinations": len(ctx.sale_destinations),
        "health_derived": int(bool(names)),
    }
    if not ctx.sale_destinations or not names:
        why = (
            "no destination of this release is on a sale basis"
            if not ctx.sale_destinations
            else "segment reaches no health data and infers no health"
        )
        evidence |= {"lacking_authorization": 0, "excluded": 0}
        return _verdict(rule, True, evidence, why, excluded=_mask(df, pl.lit(False)))
    valid = _in_force(ctx, "mhmda_sale_authorization", longest=SALE_AUTHORIZATION_LIFE)
    if valid is None:  # load_pack refuses this; never silently skip
        raise DataError(
            f"rule {rule.id!r} reads [consent] mhmda_sale_authorization_date, which is not set",
            "set [consent] mhmda_sale_authorization_date in audiences.toml",
        )
    lacking = _mask(df, ~valid)
    n = _count(df, lacking)
    evidence |= {"lacking_authorization": n, "excluded": n}
    detail = (
        f"health-derived segment ({len(names)} health-inferring name(s)) sold to "
        f"{', '.join(ctx.sale_destinations)}: released there only to people with a signed "
        "authorization to sell, in force today (at most one year old, not revoked)"
    )
    return _verdict(rule, True, evidence, detail, excluded=lacking)


# Filter rules whose exclusions hold only for some destinations of a release: the gate
# applies their mask to the sale-basis destinations, not to the whole release.
SALE_ONLY = frozenset({"sale_authorization"})


_NAME_WORDS = re.compile(r"[^A-Za-z0-9]+")


def geofence_fields(p: HealthGeofenceParams, refs: Any) -> list[str]:
    """Segment names with a word starting with one of ``field_words`` (``near_clinic``,
    ``distance_to_hospital_km``); ``linear_score`` is not one."""
    if refs is None:
        return []
    prefixes = tuple(w.lower() for w in p.field_words)
    return [
        name
        for name in _referenced_names(refs)
        if any(w.startswith(prefixes) for w in _NAME_WORDS.split(name.lower()) if w)
    ]


def health_geofence(rule: Rule, ctx: FilterContext) -> Verdict:
    p: HealthGeofenceParams = rule.params  # type: ignore[assignment]
    df = ctx.candidates
    fields = geofence_fields(p, _references(ctx))
    evidence = {"candidates": df.height, "location_fields": len(fields), "excluded": 0}
    if not fields:
        return _verdict(
            rule,
            True,
            evidence,
            "segment has no location-based condition",
            excluded=_mask(df, pl.lit(False)),
        )
    detail = (
        f"the segment targets by location ({', '.join(fields)}): geofencing around health "
        "facilities is unlawful — remove the location condition"
    )
    # everyone is affected: the gate narrows this to the pack's jurisdictions
    return _verdict(rule, False, evidence, detail, excluded=_mask(df, pl.lit(True)))


def ad_consent_signals(rule: Rule, ctx: FilterContext) -> Verdict:
    p: AdConsentSignalsParams = rule.params  # type: ignore[assignment]
    df = ctx.candidates
    parts: dict[str, pl.Expr] = {}
    for signal in p.require:
        column = getattr(ctx.config.consent, signal)
        if column is not None:
            _column(df, column, signal)  # names a missing column
        parts[f"{signal}_not_granted"] = consent_signal(df, column, signal) != "GRANTED"
    evidence, mask = _flagged(df, parts)
    detail = f"released only to people with {' and '.join(p.require)} consent GRANTED"
    return _verdict(rule, True, evidence, detail, excluded=mask)


def sensitive_pi_opt_out(rule: Rule, ctx: FilterContext) -> Verdict:
    p: SensitivePiOptOutParams = rule.params  # type: ignore[assignment]
    df = ctx.candidates
    parts: dict[str, pl.Expr] = {}
    for request in p.honour:
        column = getattr(ctx.config.consent, request)
        if column is None:  # load_pack refuses this; never silently skip
            raise DataError(
                f"rule {rule.id!r} honours {request} but [consent] {request} is not set",
                f"set [consent] {request} in audiences.toml",
            )
        words = ctx.config.consent.vocabulary(request)
        parts[request] = truthy(df, column, request, words).fill_null(False)
    evidence, mask = _flagged(df, parts)
    detail = f"people who asked to {' or '.join(_REQUESTS[r] for r in p.honour)} are excluded"
    return _verdict(rule, True, evidence, detail, excluded=mask)


def _flagged(df: pl.DataFrame, parts: dict[str, pl.Expr]) -> tuple[dict[str, int], pl.Series]:
    """Evidence (candidates, people each flag catches, excluded) and the exclusion mask of
    people any of the boolean ``parts`` flags."""
    evidence: dict[str, int] = {"candidates": df.height}
    if not parts or df.height == 0:
        evidence.update(dict.fromkeys(parts, 0))
        mask = _mask(df, pl.lit(False))
    else:
        # each reason once per candidate: its count and the mask read the same columns
        # (with_columns broadcasts a literal to every row, as in _mask)
        reasons = df.with_columns(
            e.fill_null(False).alias(f"__reason_{n}") for n, e in parts.items()
        ).select(pl.col(f"__reason_{n}").alias(n) for n in parts)
        evidence.update({n: int(v) for n, v in reasons.sum().row(0, named=True).items()})
        mask = reasons.select(pl.any_horizontal(pl.all()).alias("excluded")).to_series()
    evidence["excluded"] = _count(df, mask)
    return evidence, mask


_REQUESTS = {
    "limit_sensitive_pi": "limit the use of their sensitive personal information",
    "opt_out_of_sharing": "opt out of sharing (or sent Global Privacy Control)",
}

FILTERS.update(
    {
        "health_data_consent": health_data_consent,
        "health_geofence": health_geofence,
        "ad_consent_signals": ad_consent_signals,
        "sale_authorization": sale_authorization,
        "sensitive_pi_opt_out": sensitive_pi_opt_out,
    }
)

# The [consent] keys each jurisdiction rule kind reads (load_pack checks they are set).
REQUIRED_CONSENT: dict[str, Callable[[Params], tuple[str, ...]]] = {
    "health_data_consent": lambda p: (p.consent,),  # type: ignore[attr-defined]
    "ad_consent_signals": lambda p: tuple(p.require),  # type: ignore[attr-defined]
    "sensitive_pi_opt_out": lambda p: tuple(p.honour),  # type: ignore[attr-defined]
    # a revocation must be seen to be honoured (RCW 19.373.070(2)(f)); the expiry column
    # may stay unset: the one-year life applies regardless
    "sale_authorization": lambda p: (
        "mhmda_sale_authorization_date",
        "mhmda_sale_authorization_revoked",
    ),
}


# ---------------------------------------------------------------------------------------
# A person's request follows them through the whole CRM (docs/policy-rules.md, "Requests
# hold CRM-wide")

# Jurisdiction rule kinds that honour a request a person makes (an opt-out, a "limit use",
# a withdrawn or denied consent): a CRM record carrying it holds out every candidate
# record linked to it one hop (a shared email, phone or name + postal code), wherever the
# segment's filters left it.
CRM_WIDE = ("sensitive_pi_opt_out", "health_data_consent", "sale_authorization")
LINKED_REQUEST = "__linked_request"


def request_columns(rule: Rule) -> tuple[str, str]:
    """The candidate columns the build sets for ``rule``: linked to a CRM record carrying
    the request (anywhere), and to one carrying it in the rule's scope."""
    return f"{LINKED_REQUEST}:{rule.id}:any", f"{LINKED_REQUEST}:{rule.id}:scoped"


def _request_expr(rule: Rule, config: ProjectConfig, probe: pl.DataFrame) -> pl.Expr | None:
    """True for a CRM record carrying the request ``rule`` honours."""
    c = config.consent
    if rule.kind == "sensitive_pi_opt_out":
        honour = rule.params.honour  # type: ignore[attr-defined]
        parts = [
            truthy(probe, getattr(c, r), r, c.vocabulary(r)).fill_null(False)
            for r in honour
            if getattr(c, r) is not None
        ]
        return pl.any_horizontal(parts) if parts else None
    if rule.kind == "sale_authorization":
        # a revoked authorization to sell is the person's answer, on whichever record it
        # was recorded (revoked on or before the release day, as the rule reads it)
        revoked = c.mhmda_sale_authorization_revoked
        if revoked is None or not any(d.basis == "sale" for d in config.destinations.values()):
            return None
        from audiences.core import clock

        day = pl.lit(clock.today(), dtype=pl.Date)
        when = as_date(probe, revoked, "mhmda_sale_authorization_revoked")
        return (when <= day).fill_null(False)
    role = rule.params.consent  # type: ignore[attr-defined]
    column = getattr(c, role)
    if column is None:
        return None
    # a withdrawn or denied consent is the person's answer; a missing one is no request
    return consent_signal(probe, column, role, c.vocabulary(role)) == "DENIED"


def crm_requests(
    rules: Iterable[Rule], config: ProjectConfig, schema: pl.Schema
) -> dict[str, pl.Expr]:
    """Per jurisdiction rule of a ``CRM_WIDE`` kind, two boolean expressions over the
    contacts (named by :func:`request_columns`): the record carries the request; it
    carries it and is in the rule's scope (its jurisdictions, or unknown)."""
    from audiences.crm.jurisdiction import in_scope_expr

    probe = pl.DataFrame(schema=schema)
    flags: dict[str, pl.Expr] = {}
    for rule in rules:
        if rule.kind not in CRM_WIDE or not rule.jurisdictions or rule.severity != "block":
            continue
        request = _request_expr(rule, config, probe)
        if request is None:
            continue
        anywhere, scoped_name = request_columns(rule)
        flags[anywhere] = request
        flags[scoped_name] = request & in_scope_expr(schema, config, rule.jurisdictions)
    return flags


def crm_request_filter(flags: Mapping[str, pl.Expr]) -> pl.Expr | None:
    """True for a record carrying any request of ``flags`` (:func:`crm_requests`): the
    cheap part, without the jurisdiction, that picks the records to index."""
    anywhere = [e for name, e in sorted(flags.items()) if name.endswith(":any")]
    return pl.any_horizontal(anywhere) if anywhere else None


def _linked_requests(
    rule: Rule, ctx: FilterContext, verdict: Verdict, scope: pl.Series
) -> pl.Series | None:
    """Candidates held out because a CRM record linked to them carries the request the
    rule honours: either record in the rule's scope suffices (a person's request follows
    them; so does the law of where they live). None when the build set no such columns
    or the request does not bear on this segment (consent to share, for a segment that
    reaches no health data)."""
    if rule.kind not in CRM_WIDE or ctx.candidates.height == 0:
        return None
    if rule.kind == "health_data_consent" and not verdict.evidence.get("health_derived"):
        return None
    if rule.kind == "sale_authorization" and not (
        verdict.evidence.get("health_derived") and verdict.evidence.get("sale_destinations")
    ):
        return None  # nothing sold, or nothing health-derived: no sale to hold anyone from
    anywhere, scoped_name = request_columns(rule)
    df = ctx.candidates
    if anywhere not in df.columns or scoped_name not in df.columns:
        return None
    linked = df.get_column(scoped_name).fill_null(False) | (
        df.get_column(anywhere).fill_null(False) & scope
    )
    return linked.alias("excluded")


def run_filter(rule: Rule, ctx: FilterContext) -> Verdict:
    """The filter rule's verdict; a jurisdiction pack's rule is narrowed to the people of
    its jurisdictions and the people whose jurisdiction is unknown (strictest treatment)."""
    verdict = FILTERS[rule.kind](rule, ctx)
    return scoped(rule, ctx, verdict) if rule.jurisdictions else verdict


def _whole_people(ctx: FilterContext, excluded: pl.Series) -> tuple[pl.Series, int]:
    """``excluded`` widened to every candidate record of the people it excludes, and how
    many records that added. A jurisdiction rule judges a person's request or consent: a
    "limit use" request, a GPC opt-out or a withdrawn consent on one CRM record holds for
    the person's other records too (they share a key the platforms match on)."""
    n = int(excluded.sum()) if excluded.len() else 0
    persons = ctx.persons if 0 < n < excluded.len() else None
    if persons is None:
        return excluded, 0
    wider = (
        pl.DataFrame({"p": persons, "x": excluded})
        .select(pl.col("x").any().over("p").alias("excluded"))
        .to_series()
    )
    return wider, int(wider.sum()) - n


def scoped(rule: Rule, ctx: FilterContext, verdict: Verdict) -> Verdict:
    """``verdict`` with its exclusion mask ANDed with the jurisdiction mask and its
    evidence counted per jurisdiction (``in_us_wa``, ``excluded_us_wa``, ``in_unknown``…)."""
    from audiences.crm.jurisdiction import evidence_suffix, in_jurisdictions

    df = ctx.candidates
    found = ctx.jurisdictions
    inside, unknown = in_jurisdictions(found, rule.jurisdictions)
    scope = inside | unknown
    base = verdict.excluded if verdict.excluded is not None else _mask(df, pl.lit(False))
    excluded = (base & scope).alias("excluded") if df.height else base
    crm_linked = _linked_requests(rule, ctx, verdict, scope)
    held = 0
    if crm_linked is not None:
        held = int((crm_linked & ~excluded).sum())
        excluded = (excluded | crm_linked).alias("excluded")
    excluded, linked = _whole_people(ctx, excluded)
    evidence = dict(verdict.evidence)
    evidence["linked_records"] = linked
    if rule.kind in CRM_WIDE:
        evidence["linked_crm_records"] = held
    for code in rule.jurisdictions:
        member = found.list.contains(code).fill_null(False) if df.height else scope
        key = evidence_suffix(code)
        evidence[f"in_{key}"] = _count(df, member)
        evidence[f"excluded_{key}"] = _count(df, excluded & member) if df.height else 0
    evidence["in_unknown"] = _count(df, unknown)
    evidence["excluded_unknown"] = _count(df, excluded & unknown) if df.height else 0
    evidence["out_of_jurisdiction"] = df.height - _count(df, scope)
    evidence["excluded"] = _count(df, excluded)
    in_scope = _count(df, scope)
    where = f"{', '.join(rule.jurisdictions)} (+{evidence['in_unknown']} of unknown jurisdiction)"
    if in_scope == 0:
        detail = f"applies to {where}: nobody selected is in its jurisdiction"
        return replace(verdict, passed=True, evidence=evidence, detail=detail, excluded=excluded)
    detail = f"applies to {where}: {evidence['excluded']} of {in_scope} excluded; {verdict.detail}"
    return replace(verdict, evidence=evidence, detail=detail, excluded=excluded)
