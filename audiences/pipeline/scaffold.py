"""``audiences init DIR --from CONTACTS [--events EVENTS]``: a project proposed from the
user's own CRM export.

The export is profiled (:mod:`audiences.crm.inference`), each column mapped to an identity
field, a consent fact or an event role by its header and its values, types and date
formats declared, and every column or event type that looks clinical or like a patient's
status written under ``unclassified`` — ``validate`` fails until the user moves each to
sensitive or not sensitive. Raw values never enter the config: only column names, formats
and the vocabulary of event types (low-cardinality, not identifiers, seen at least k times).
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audiences.core.config import CONFIG_FILE, ProjectConfig
from audiences.core.errors import ConfigError, DataError, UsageError
from audiences.crm.inference import (
    CONTENT_FIELDS,
    EVENT_ID_HEADERS,
    EVENT_TIME_HEADERS,
    EVENT_TYPE_HEADERS,
    IDENTITY_HEADERS,
    Column,
    Profile,
    header_key,
    looks_clinical,
    profile,
    unrecognised_shapes,
)

# Consent roles by header: (role, key fragments any of which names it, fragments that
# rule it out, kind). Checked in order; a column takes the first role it matches.
CONSENT_HEADERS: tuple[tuple[str, tuple[str, ...], tuple[str, ...], str], ...] = (
    ("hipaa_authorization_expires", ("hipaaauthexp", "hipaaauthorizationexp"), (), "date"),
    ("hipaa_authorization_revoked", ("hipaaauthrevok", "hipaaauthorizationrevok"), (), "date"),
    ("hipaa_authorization_date", ("hipaaauth",), (), "date"),
    ("ad_personalization", ("adpersonalization",), (), "word"),
    ("ad_user_data", ("aduserdata",), (), "word"),
    ("share_health_data", ("sharehealthdata",), (), "word"),
    ("explicit_health_marketing", ("explicithealthmarketing",), (), "word"),
    ("limit_sensitive_pi", ("limitsensitive",), (), "word"),
    ("opt_out_of_sharing", ("optoutofsharing", "globalprivacycontrol", "gpc"), (), "word"),
    ("deceased", ("deceased",), ("date",), "word"),
    ("do_not_contact", ("donotcontact", "donotcall", "donotemail", "dnc", "optout", "unsub"),
     (), "word"),
    ("marketing_opt_in", ("optin", "marketingconsent", "emailconsent", "subscri"),
     ("optout", "unsub"), "word"),
)  # fmt: skip


@dataclass
class Proposal:
    """What ``init --from`` proposes, and what it could not map."""

    contacts: Profile
    events: Profile | None
    contact_id: str = ""
    identity: dict[str, str] = field(default_factory=dict)
    consent: dict[str, str] = field(default_factory=dict)
    types: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)
    case_insensitive: list[str] = field(default_factory=list)
    unclassified: list[str] = field(default_factory=list)
    event_roles: dict[str, str] = field(default_factory=dict)
    event_types: list[str] = field(default_factory=list)
    rarer_event_types: int = 0
    event_unclassified: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "contacts": {"path": str(self.contacts.path), "rows": self.contacts.rows},
            "events": {"path": str(self.events.path), "rows": self.events.rows}
            if self.events
            else None,
            "contact_id": self.contact_id,
            "identity": self.identity,
            "consent": self.consent,
            "types": self.types,
            "case_insensitive": self.case_insensitive,
            "unclassified": self.unclassified,
            "event_roles": self.event_roles,
            "event_types_to_classify": self.event_types,
            "rarer_event_types": self.rarer_event_types,
            "event_columns_to_classify": self.event_unclassified,
            "not_mapped": self.notes,
        }


def propose(contacts: Path, events: Path | None, *, min_count: int) -> Proposal:
    """Profile the export(s) and map their columns; a DataError when a file is unusable."""
    proposal = Proposal(profile(contacts, min_count=min_count), None)
    if events is not None:
        proposal.events = profile(events, min_count=min_count)
    _map_identity(proposal)
    _map_consent(proposal)
    _contacts_types(proposal)
    if proposal.events is not None:
        _map_events(proposal, proposal.events)
    return proposal


def _map_identity(proposal: Proposal) -> None:
    columns = proposal.contacts.columns
    used: set[str] = set()
    for field_name, headers in IDENTITY_HEADERS.items():
        match = next((c for c in columns if c.key in headers and c.name not in used), None)
        if match is None and field_name in ("email", "state", "gender", "country"):
            match = next(
                (c for c in columns if c.name not in used and _content(c, field_name) >= 0.9),
                None,
            )
        if match is None:
            continue
        if field_name in CONTENT_FIELDS and _content(match, field_name) < 0.5:
            proposal.notes.append(
                f"{match.name!r} is named like {field_name} but few of its values read as one"
                f" ({_content(match, field_name):.0%}): not mapped"
            )
            continue
        if field_name == "birth_date" and match.dtype not in ("date", "datetime"):
            proposal.notes.append(f"{match.name!r} is named like a birth date but is not dates")
            continue
        proposal.identity[field_name] = match.name
        used.add(match.name)
    missing = [f for f in IDENTITY_HEADERS if f not in proposal.identity and f != "external_id"]
    if missing:
        proposal.notes.append(
            f"no column found for identity {', '.join(missing)}: map them under [identity] "
            "if the export has them (platforms match on more identifiers)"
        )
    rows = proposal.contacts.rows
    ident = proposal.identity.get("external_id")
    if ident is None or proposal.contacts.column(ident).distinct < rows:
        unique = [c for c in columns if c.filled == rows and c.distinct == rows]
        pick = next((c for c in unique if c.dtype in ("str", "int") and c.name not in used), None)
        if pick is None:
            raise DataError(
                f"no column of {proposal.contacts.path.name} identifies a contact (unique and"
                " never empty)",
                "export the CRM's record id with the contacts, then run init --from again",
            )
        proposal.identity["external_id"] = pick.name
    proposal.contact_id = proposal.identity["external_id"]


def _content(column: Column, field_name: str) -> float:
    return column.content.get(field_name, 0.0)


def _map_consent(proposal: Proposal) -> None:
    mapped = set(proposal.identity.values())
    for column in proposal.contacts.columns:
        if column.name in mapped:
            continue
        for role, names, not_names, kind in CONSENT_HEADERS:
            if role in proposal.consent or not any(n in column.key for n in names):
                continue
            if any(n in column.key for n in not_names):
                continue
            if kind == "date" and column.dtype not in ("date", "datetime"):
                proposal.notes.append(f"{column.name!r} is named like {role} but is not dates")
            elif kind == "word" and column.dtype == "str" and not column.consent_words:
                raise DataError(
                    f"column {column.name!r} is named like the consent fact {role} but "
                    f"{column.filled} filled row(s) hold {column.distinct} distinct value(s), "
                    "some not consent words (shapes "
                    f"{unrecognised_shapes(proposal.contacts.path, column.name)})",
                    "re-export it with consent words (opted in / opted out, yes / no, "
                    "granted / denied, true / false), then run init --from again",
                )
            else:
                proposal.consent[role] = column.name
                mapped.add(column.name)
            break
    for column in proposal.contacts.columns:
        if column.name in mapped or column.dtype != "str" or not column.consent_words:
            continue
        if column.distinct >= 2:  # only consent words (yes/no, opted in/out...): by content
            proposal.notes.append(
                f"{column.name!r} holds only consent words: map it under [consent] if it is "
                "a consent (an opt-out column as do_not_contact, never as marketing_opt_in)"
            )
    if "marketing_opt_in" not in proposal.consent:
        proposal.notes.append(
            "no marketing opt-in column found: map [consent] marketing_opt_in to the CRM's "
            "opt-in column before building"
        )


def _declare(column: Column, *, as_text: bool) -> dict[str, str] | None:
    if column.dtype in ("date", "datetime") and column.format is not None:
        return {"type": column.dtype, "format": column.format}
    if column.dtype in ("date", "datetime"):
        return {"type": column.dtype}
    if as_text and column.dtype in ("int", "float"):
        return {"type": "str"}  # ids, ZIPs and phones keep their leading zeros
    return None


def _contacts_types(proposal: Proposal) -> None:
    identity = set(proposal.identity.values())
    consent = set(proposal.consent.values())
    declared: dict[str, dict[str, str]] = {}
    for column in proposal.contacts.columns:
        spec = _declare(column, as_text=column.name in identity)
        if spec is not None:
            declared[column.name] = spec
        if column.name in identity or column.name in consent:
            continue
        if column.case_variants and column.vocabulary is not None:
            proposal.case_insensitive.append(column.name)
        if _clinical(column):
            proposal.unclassified.append(column.name)
    proposal.types["contacts"] = declared


def _clinical(column: Column) -> bool:
    return looks_clinical(column.name) or any(looks_clinical(v) for v in column.vocabulary or ())


def _map_events(proposal: Proposal, events: Profile) -> None:
    columns = events.columns
    id_key = header_key(proposal.contact_id)
    who = next((c for c in columns if c.key == id_key), None) or next(
        (c for c in columns if c.key in EVENT_ID_HEADERS and c.key != "id"), None
    )
    kind = next((c for c in columns if c.key in EVENT_TYPE_HEADERS and c.dtype == "str"), None)
    kind = kind or next((c for c in columns if c.vocabulary and c is not who), None)
    timed = [c for c in columns if c.dtype in ("date", "datetime")]
    when = next((c for c in timed if c.key in EVENT_TIME_HEADERS), timed[0] if timed else None)
    missing = [r for r, c in (("contact id", who), ("event type", kind), ("time", when)) if not c]
    if who is None or kind is None or when is None:
        raise DataError(
            f"{events.path.name}: no {' / '.join(missing)} column found",
            "export the events with the contact's id, the event type and its date, or leave "
            "out --events and add [sources.events] by hand (README, Configuration)",
        )
    proposal.event_roles = {"contact_id": who.name, "type": kind.name, "time": when.name}
    declared: dict[str, dict[str, str]] = {}
    for column in columns:
        spec = _declare(column, as_text=column is who)
        if column is when:
            spec = {"type": "datetime", **({"format": when.format} if when.format else {})}
        if spec is not None:
            declared[column.name] = spec
        if column not in (who, kind, when) and column.dtype == "str" and _clinical(column):
            proposal.event_unclassified.append(column.name)
    proposal.types["events"] = declared
    proposal.event_types = list(kind.vocabulary or [])
    proposal.rarer_event_types = kind.rarer
    if kind.vocabulary is None:
        proposal.notes.append(
            f"event type column {kind.name!r} has more than 50 distinct values: classify "
            "them with `audiences columns events` and [sources.events] sensitive_types"
        )


# ------------------------------------------------------------------------------ writing
def _q(text: str) -> str:
    """A TOML basic string (JSON escapes are TOML escapes for these characters)."""
    return json.dumps(text, ensure_ascii=False)


def _list(names: list[str]) -> str:
    return "[" + ", ".join(_q(n) for n in names) + "]"


def _inline(spec: dict[str, str]) -> str:
    return "{ " + ", ".join(f"{k} = {_q(v)}" for k, v in spec.items()) + " }"


def _path_for(directory: Path, path: Path) -> str:
    path, directory = path.resolve(), directory.resolve()
    return str(path.relative_to(directory)) if path.is_relative_to(directory) else str(path)


def render_config(proposal: Proposal, directory: Path, *, pack: str) -> str:
    """``audiences.toml`` for the proposal, with a comment on every guess to check."""
    name = directory.resolve().name or "audiences"
    lines = [
        "# Proposed by `audiences init --from` from the export's header and values: check",
        "# every mapping, classify what is listed under `unclassified`, then run",
        "# `audiences validate` (it fails while anything is left unclassified).",
        "",
        "[project]",
        f"name = {_q(name)}",
        'state_dir = ".audiences"',
        "",
        "[sources.contacts]",
        f"path = {_q(_path_for(directory, proposal.contacts.path))}",
        f"id = {_q(proposal.contact_id)}",
        *_columns_line(proposal.types.get("contacts", {})),
    ]
    if proposal.case_insensitive:
        lines.append(f"case_insensitive = {_list(proposal.case_insensitive)}")
    if proposal.events is not None:
        lines += _events_lines(proposal, directory)
    lines += ["", "[identity]                             # CRM column of each identifier"]
    lines += [f"{k} = {_q(v)}" for k, v in proposal.identity.items()]
    lines += ['default_country = "US"', "", "[columns]", "sensitive = []"]
    qi = [proposal.identity[f] for f in ("birth_date", "zip", "gender") if f in proposal.identity]
    lines.append(f"quasi_identifiers = {_list(qi)}")
    lines.append("not_sensitive = []")
    if proposal.unclassified:
        lines += [
            "# TODO: these look clinical or like a patient's status. Move each to sensitive",
            "# (health data or derived from it) or to not_sensitive; validate fails meanwhile",
            "# and the gate treats them as sensitive.",
            f"unclassified = {_list(proposal.unclassified)}",
        ]
    lines += ["", "[consent]"]
    lines += [f"{k} = {_q(v)}" for k, v in proposal.consent.items()]
    if "marketing_opt_in" not in proposal.consent:
        lines.append('# TODO: marketing_opt_in = "the CRM\'s opt-in column"')
    lines += ["", "[policy]", f"pack = {_q(pack)}", "", "[insights]"]
    lines += ['dimensions = ["age_band", "state", "sex"]', "epsilon = 1.0", ""]
    lines += ["[destinations.file]", 'kind = "file"', 'path = "exports"', 'formats = ["csv"]']
    lines += [
        "",
        "[destinations.meta]                     # TODO: your ad account",
        'kind = "meta"',
        'ad_account_id = "act_1234567890"',
        'access_token_env = "META_ACCESS_TOKEN"',
        'endpoint = "http://127.0.0.1:18765"    # the sandbox (`audiences sandbox`); remove for '
        "the real Graph API",
    ]
    lines += ["", "[approvers]", '# keys = { "name" = "base64-public-key" }   # audiences keygen']
    if proposal.notes:
        lines += ["", "# Not mapped by init --from:"] + [f"# - {n}" for n in proposal.notes]
    return "\n".join(lines) + "\n"


def _columns_line(declared: dict[str, dict[str, str]]) -> list[str]:
    if not declared:
        return []
    body = ", ".join(f"{_q(col)} = {_inline(spec)}" for col, spec in declared.items())
    return [f"columns = {{ {body} }}"]


def _events_lines(proposal: Proposal, directory: Path) -> list[str]:
    assert proposal.events is not None
    roles = proposal.event_roles
    lines = [
        "",
        "[sources.events]",
        f"path = {_q(_path_for(directory, proposal.events.path))}",
        f"contact_id = {_q(roles['contact_id'])}",
        f"type = {_q(roles['type'])}",
        f"time = {_q(roles['time'])}",
        *_columns_line(proposal.types.get("events", {})),
        "sensitive_types = []",
        "not_sensitive_types = []",
        "sensitive_columns = []",
        "not_sensitive_columns = []",
    ]
    if proposal.event_types:
        lines += [
            "# TODO: is each event type health data? For a covered entity a visit, an",
            '# appointment or a portal login is PHI (docs/policy-rules.md, "Patient status is',
            '# PHI"). Move each to sensitive_types or not_sensitive_types.',
            f"unclassified_types = {_list(proposal.event_types)}",
        ]
    if proposal.rarer_event_types:
        lines.append(
            f"# {proposal.rarer_event_types} rarer event type(s) not listed: see "
            "`audiences columns events`"
        )
    if proposal.event_unclassified:
        lines += [
            "# TODO: move each to sensitive_columns or not_sensitive_columns.",
            f"unclassified_columns = {_list(proposal.event_unclassified)}",
        ]
    return lines


def starter_segment(proposal: Proposal) -> str:
    """One segment that reads only identity columns (so it needs no classification)."""
    if "birth_date" in proposal.identity:
        where, text = "  age: {gte: 18}", "Adults"
    else:
        where, text = f"  {_q(proposal.contact_id)}: {{not_null: true}}", "Everyone"
    return (
        "name: everyone-adult\n"
        f"description: {text} in the CRM export, a starting point to edit or replace\n"
        "destinations: [file, meta]\n"
        f"where:\n{where}\n"
    )


def scaffold(
    directory: Path,
    contacts: Path,
    events: Path | None = None,
    *,
    pack: str = "hipaa-marketing",
    min_count: int = 100,
    force: bool = False,
) -> tuple[list[Path], Proposal]:
    """Write a project proposed from the export(s); nothing is written on any error."""
    from audiences.core.atomic import write_text
    from audiences.pipeline.project import copy_template

    directory = Path(directory)
    if (directory / CONFIG_FILE).exists() and not force:
        raise ConfigError(
            f"{directory / CONFIG_FILE} already exists",
            "pick an empty folder, or pass --force to overwrite it",
        )
    proposal = propose(contacts, events, min_count=min_count)
    text = render_config(proposal, directory, pack=pack)
    try:
        ProjectConfig.model_validate(tomllib.loads(text))
    except (tomllib.TOMLDecodeError, ValueError) as exc:  # a bug here, never the user's
        raise DataError(
            f"the proposed audiences.toml does not load ({str(exc).splitlines()[0]})",
            "report it as a bug in audiences; write audiences.toml by hand meanwhile",
        ) from None
    directory.mkdir(parents=True, exist_ok=True)
    written = copy_template(directory, skip=("audiences.toml", "segments"))
    write_text(directory / CONFIG_FILE, text, mode=0o644)
    segment = directory / "segments" / "everyone-adult.yaml"
    segment.parent.mkdir(exist_ok=True)
    write_text(segment, starter_segment(proposal), mode=0o644)
    return [*written, directory / CONFIG_FILE, segment], proposal


def scaffold_with_pack(
    directory: Path, contacts: Path, events: Path | None, *, pack: str, force: bool = False
) -> tuple[list[Path], Proposal]:
    """:func:`scaffold` with a built-in pack; its min size is the k of the vocabularies."""
    from audiences.pipeline.project import min_size_k
    from policies.pack import builtin_names, builtin_pack

    if pack not in builtin_names():
        raise UsageError(
            f"--pack {pack!r} is not a built-in pack",
            f"use one of: {', '.join(builtin_names())} (a project pack can extend it later)",
        )
    k = min_size_k(builtin_pack(pack))
    return scaffold(directory, contacts, events, pack=pack, min_count=k, force=force)
