"""``audiences validate``: every problem of every file in one run, as findings.

The schema checks of the segment language, plus checks of the data itself — declared
types parse on every row, mapped identity and consent columns exist, consent values are
words the tool understands, the values a segment compares occur in the data, a segment
selects somebody — so a CRM export that would fail the nightly ``build`` fails here.
"""

from __future__ import annotations

import difflib
from datetime import date
from typing import TYPE_CHECKING

import polars as pl

from audiences.core.config import ProjectConfig, SourceConfig
from audiences.core.errors import AudiencesError, ConfigError, SegmentError
from audiences.crm.checks import (
    Finding,
    check_consent_values,
    check_mapped_columns,
    check_types,
    raw_frame,
)
from audiences.crm.inference import looks_clinical

if TYPE_CHECKING:
    from audiences.crm.sources import Sources
    from audiences.segments import Segment
    from audiences.segments.validate import ValueTest
    from policies.pack import Pack

# Columns with at most this many distinct values have their segment values checked.
LOW_CARDINALITY = 50
# Google's consent signals, each a [consent] key (docs/platforms.md)
GOOGLE_SIGNALS = ("ad_user_data", "ad_personalization")


class Validation:
    """Collects findings; each step carries on after the problems of the one before."""

    def __init__(self, config: ProjectConfig, as_of: date) -> None:
        self.config = config
        self.as_of = as_of
        self.findings: list[Finding] = []
        self._distinct: dict[tuple[bool, str], dict[str, int] | None] = {}

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    def error(self, code: str, exc: AudiencesError, file: str | None = None) -> None:
        self.findings.append(Finding.from_error(code, exc, file))

    # -- pack, segments, sources ---------------------------------------------------------

    def pack(self) -> Pack | None:
        from audiences.pipeline.insights import default_epsilon
        from policies.pack import load_pack

        try:
            pack = load_pack(self.config)
        except AudiencesError as exc:
            self.error("pack", exc)
            return None
        try:
            default_epsilon(self.config, pack)
        except AudiencesError as exc:
            self.error("config", exc, "audiences.toml")
        return pack

    def segments(self, only: list[str] | None) -> list[Segment]:
        from audiences.pipeline.select import select_segments
        from audiences.segments import load_segment

        directory = self.config.segments_dir
        if not directory.is_dir():
            try:
                return select_segments(self.config, only)
            except AudiencesError as exc:
                self.error("segment", exc)
                return []
        loaded: dict[str, Segment] = {}
        for path in sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml")):
            try:
                segment = load_segment(path)
            except AudiencesError as exc:
                self.error("segment", exc, str(path))
                continue
            if segment.name in loaded:
                self.error(
                    "segment",
                    SegmentError(
                        f"segment name '{segment.name}' is defined twice: in "
                        f"{loaded[segment.name].source} and {path}",
                        "rename one of them; segment names must be unique",
                    ),
                    str(path),
                )
            loaded[segment.name] = segment
        if not only:
            if not loaded and not self.errors:
                self.error(
                    "segment",
                    SegmentError(f"no segment files in {directory}", "add segments/<name>.yaml"),
                )
            return [loaded[name] for name in sorted(loaded)]
        for name in only:
            if name not in loaded:
                close = difflib.get_close_matches(name, list(loaded), n=1)
                hint = f"did you mean {close[0]!r}?" if close else "run `audiences validate`"
                self.error(
                    "segment", SegmentError(f"no segment named {name!r} in {directory}", hint)
                )
        return [loaded[name] for name in only if name in loaded]

    def sources(self) -> Sources | None:
        """The sources, lazily loaded, or None when a file cannot be read at all."""
        from audiences.crm.sources import diagnose_values, load_sources, read_source, scan_source
        from audiences.pipeline.export_checks import id_error

        config = self.config
        named: list[tuple[str, SourceConfig]] = [("contacts", config.sources.contacts)]
        if config.sources.events is not None:
            named.append(("events", config.sources.events))
        readable = True
        for name, source in named:
            try:
                scan_source(name, source, config)
            except AudiencesError as exc:
                self.error("source", exc, source.label)
                readable = False
                continue
            self.findings += check_types(name, source, config)
        if not readable:
            return None
        contacts = config.sources.contacts
        file = contacts.label
        if contacts.is_database:
            raw = read_source("contacts", contacts, config)
        else:
            raw = raw_frame(contacts, config.path(contacts.file()))
        mapped = check_mapped_columns(config, raw.collect_schema(), file)
        self.findings += mapped
        self.findings += check_consent_values(config, raw, file)
        if mapped:
            return None
        try:
            sources = load_sources(config)
            # the whole export's ids, as every build checks them (the types: check_types)
            broken = id_error(config, sources)
        except AudiencesError as exc:
            self.error("source", exc, file)
            return None
        except pl.exceptions.PolarsError as exc:  # an id column that does not parse
            if not self.errors:  # (check_types has said so when the type is declared)
                self.error("source", diagnose_values("contacts", contacts, config, exc), file)
            return None
        if broken is not None:
            self.error("source", broken, file)
        return sources

    def sensitivity(self, segments: list[Segment], sources: Sources, pack: Pack | None) -> None:
        """Configured sensitive names that never occur (a misspelling leaves the real one
        unprotected), unclassified columns a segment reads under hipaa-marketing, and
        warnings about unclassified columns that look derived from health data."""
        from policies.rules import require_classified

        try:
            for warning in check_sensitive_present(self.config, sources):
                what, _, fix = warning.partition(": add it")
                self.findings.append(
                    Finding("warning", "sensitivity", what, "add it" + fix, "audiences.toml")
                )
        except AudiencesError as exc:
            self.error("sensitivity", exc, "audiences.toml")
        if not self.errors:  # advice, once the project has no errors
            for warning in clinical_warnings(self.config, sources):
                what, _, fix = warning.partition(": add it")
                self.findings.append(
                    Finding("warning", "sensitivity", what, "add it" + fix, "audiences.toml")
                )
        if pack is not None and not self.errors:  # a typo is a typo first, not unclassified
            try:
                require_classified(segments, self.config, pack)
            except AudiencesError as exc:
                self.error("classification", exc, "audiences.toml")

    def unclassified(self) -> None:
        """Names ``init --from`` left to classify: an error each until the user decides."""
        events = self.config.sources.events
        todo = [
            (
                "[columns]",
                "unclassified",
                "sensitive",
                "not_sensitive",
                self.config.columns.unclassified,
            )
        ]
        if events is not None:
            todo += [
                ("[sources.events]", "unclassified_types", "sensitive_types",
                 "not_sensitive_types", events.unclassified_types),
                ("[sources.events]", "unclassified_columns", "sensitive_columns",
                 "not_sensitive_columns", events.unclassified_columns),
            ]  # fmt: skip
        for table, key, yes, no, names in todo:
            for name in names:
                self.findings.append(
                    Finding(
                        "error",
                        "unclassified",
                        f"{table} {key} still lists {name!r}: is it health data?",
                        f"move it to {yes} (clinical, a patient's status such as a visit, or "
                        f'derived from them — docs/policy-rules.md, "Patient status is PHI") '
                        f"or to {no}, in audiences.toml",
                        "audiences.toml",
                        column=name,
                    )
                )

    def destinations(self) -> None:
        from connectors.file import record_export

        for name in self.config.destinations:
            try:
                record_export(self.config, name)
            except AudiencesError as exc:
                self.error("destination", exc, "audiences.toml")

    def google_consent(self) -> None:
        """A warning per Google consent signal left unmapped while a destination sends to
        Google (``google_ads``, ``google_data_manager``, a file ``for = "google_ads"``).

        A pack that reads the signal (gdpr-health) already made it an error (``pack``).
        """
        from policies.rules import GOOGLE_KINDS

        google = [
            name
            for name, spec in self.config.destinations.items()
            if spec.kind in GOOGLE_KINDS
            or (spec.kind == "file" and (spec.model_extra or {}).get("for") == "google_ads")
        ]
        reported = " ".join(f.message for f in self.errors)
        for key in GOOGLE_SIGNALS if google else ():
            if getattr(self.config.consent, key) is not None or f"[consent] {key}," in reported:
                continue
            self.findings.append(
                Finding(
                    "warning",
                    "consent",
                    f"[consent] {key} is not mapped, and {', '.join(map(repr, google))} "
                    f"send(s) to Google: everyone goes with {key} UNSPECIFIED — a denial the CRM "
                    "records is not read, and nobody in the EEA, UK or Switzerland (or of "
                    "unknown country) is sent",
                    f"name the CRM column that records it in [consent] {key} (e.g. {key} = "
                    f'"{key}_consent") in audiences.toml',
                    "audiences.toml",
                )
            )

    # -- segments against the data -------------------------------------------------------

    def against_data(self, segments: list[Segment], sources: Sources, *, k: int) -> None:
        from audiences.pipeline.insights import dimensions
        from audiences.pipeline.select import segment_context
        from audiences.segments import validate_segment

        ctx = segment_context(self.config, self.as_of)
        contacts_schema = sources.contacts.collect_schema()
        events_schema = sources.events.collect_schema() if sources.events is not None else None
        data_ok = not self.errors
        for segment in segments:
            before = len(self.errors)
            self.unknown_destinations(segment)
            for issue in validate_segment(segment, contacts_schema, events_schema, ctx):
                self.error("segment", issue.to_error())
            if len(self.errors) == before:
                for problem in event_type_problems(self.config, [segment], sources):
                    self.error("event-type", problem)
            if data_ok and len(self.errors) == before:
                # (no "selects fewer than k": against a base of exactly k - 1 records, a
                # threshold answered whether one named person had a diagnosis —
                # docs/segments.md; `preview` gives a segment's size, with noise)
                self.values(segment, sources, k)
        try:
            dimensions(self.config, contacts_schema)
        except AudiencesError as exc:
            self.error("config", exc, "audiences.toml")

    def unknown_destinations(self, segment: Segment) -> None:
        unknown = [d for d in segment.destinations if d not in self.config.destinations]
        if unknown:
            known = ", ".join(sorted(self.config.destinations)) or "none"
            self.error(
                "segment",
                SegmentError(
                    f"segment {segment.name!r} names unknown destination(s) {unknown} "
                    f"(configured: {known})",
                    "fix `destinations:` in the segment or add them to audiences.toml",
                    where=str(segment.source or segment.name),
                ),
            )

    def values(self, segment: Segment, sources: Sources, k: int) -> None:
        from audiences.segments.validate import value_tests

        for test in value_tests(segment):
            counts = self.distinct(test.field, test.events, sources)
            if counts is None:
                continue
            for value in test.values:
                finding = self.missing_value(segment, test, value, counts, k)
                if finding is not None:
                    self.findings.append(finding)

    def distinct(self, column: str, events: bool, sources: Sources) -> dict[str, int] | None:
        """Value → rows of a low-cardinality text column (canonical values for identity
        columns, lowercase for case-insensitive ones); None for any other column."""
        key = (events, column)
        if key not in self._distinct:
            self._distinct[key] = _value_counts(self.config, column, events, sources)
        return self._distinct[key]

    def missing_value(
        self, segment: Segment, test: ValueTest, value: str, counts: dict[str, int], k: int
    ) -> Finding | None:
        config = self.config
        folded = _folds(config, test.field, test.events)
        meant = _meaning(config, test.field, test.events, value)
        # a value fewer than k rows hold is reported as one no row holds: whether any row
        # holds a rare value (a diagnosis, a small town) is not for a marketer to learn
        if counts.get(meant, 0) >= k:
            return None
        common = [v for v, n in counts.items() if n >= k]
        same_case = [v for v in common if v.lower() == value.lower()]
        close = same_case or difflib.get_close_matches(
            value.lower(), [v.lower() for v in common], n=1
        )
        fix = "check the value (`audiences columns` lists the common ones)"
        if close:
            match = next(v for v in common if v.lower() == close[0].lower())
            fix = f"did you mean {match!r}?"
            if same_case and not folded:
                source = "events" if test.events else "contacts"
                fix += (
                    f" — or add {test.field!r} to [sources.{source}] case_insensitive "
                    "in audiences.toml"
                )
        return Finding(
            "warning",
            "value-not-in-data",
            f"segment {segment.name!r}: fewer than {k} rows have {test.field!r} = {value!r} "
            "(maybe none: how many is not shown)",
            fix,
            segment.source or segment.name,
            test.line,
            test.field,
        )


def _folds(config: ProjectConfig, column: str, events: bool) -> bool:
    source = config.sources.events if events else config.sources.contacts
    return source is not None and column in source.case_insensitive


def _identity_field(config: ProjectConfig, column: str, events: bool) -> str | None:
    from audiences.crm.identifiers import CANONICAL_FIELDS

    if events:
        return None
    return next((f for f in CANONICAL_FIELDS if getattr(config.identity, f) == column), None)


def _meaning(config: ProjectConfig, column: str, events: bool, value: str) -> str:
    """A segment value as the compiler compares it."""
    from audiences.crm.identifiers import canonical_values

    field = _identity_field(config, column, events)
    if field is not None:
        return canonical_values(config.identity, field, [value])[0] or value
    return value.lower() if _folds(config, column, events) else value


_ROWS = "__audiences_rows"


def _value_counts(
    config: ProjectConfig, column: str, events: bool, sources: Sources
) -> dict[str, int] | None:
    from audiences.crm.identifiers import canonical_expr

    frame = sources.events if events else sources.contacts
    if frame is None:
        return None
    schema = frame.collect_schema()
    if column not in schema or schema[column] not in (pl.String, pl.Categorical):
        return None
    field = _identity_field(config, column, events)
    if field is not None:
        value = canonical_expr(config.identity, field, schema=schema)
    elif _folds(config, column, events):
        value = pl.col(column).cast(pl.String).str.to_lowercase()
    else:
        value = pl.col(column).cast(pl.String)
    # Counted per distinct raw value first (per (state, country) for a state), then
    # canonicalized: the canonical form of every row took 14 s at 10M contacts, the
    # distinct values 0.2 s.
    roots = sorted(set(value.meta.root_names()))
    raw = frame.group_by(roots).agg(pl.len().alias(_ROWS)).collect(engine="streaming")
    counts = (
        raw.lazy()
        .select(value.alias("value"), pl.col(_ROWS))
        .group_by("value")
        .agg(pl.col(_ROWS).sum())
        .head(LOW_CARDINALITY + 1)
        .collect()
    )
    if counts.height > LOW_CARDINALITY:
        return None
    return {str(v): int(n) for v, n in counts.iter_rows() if v is not None}


def event_type_problems(
    config: ProjectConfig, segments: list[Segment], sources: Sources
) -> list[SegmentError]:
    """Every event type a segment names that no event in the data has."""
    import difflib

    import polars as pl

    if sources.events is None or config.sources.events is None:
        return []
    wanted = {t: s for s in segments for t in s.references(config.identity.birth_date).event_types}
    if not wanted:
        return []
    column = config.sources.events.type
    present = set(
        sources.events.select(pl.col(column).cast(pl.String).unique())
        .collect()
        .to_series()
        .drop_nulls()
        .to_list()
    )
    problems = []
    for event_type, segment in sorted(wanted.items()):
        if event_type not in present:
            close = difflib.get_close_matches(event_type, sorted(present), n=1)
            hint = (
                f"did you mean {close[0]!r}?"
                if close
                else (f"event types in the data: {', '.join(sorted(present)[:12])}")
            )
            problems.append(
                SegmentError(
                    f"segment {segment.name!r} uses event type {event_type!r}, which no event "
                    f"in the data has (it would select nobody)",
                    hint,
                    where=segment.source or segment.name,
                )
            )
    return problems


def check_sensitive_present(config: ProjectConfig, sources: Sources) -> list[str]:
    """Refuse a configured sensitive event type or column that never occurs in the data (a
    misspelling leaves the real one unprotected); return warnings about undeclared contacts
    columns whose names suggest data derived from sensitive ones."""
    import polars as pl

    from policies.rules import DERIVED_HINTS, classified_columns, sensitivity_key

    contacts = list(sources.contacts.collect_schema().names())
    _require_names("[columns] sensitive", config.columns.sensitive, contacts)
    events = config.sources.events
    if events is not None and sources.events is not None:
        _require_names(
            "[sources.events] sensitive_columns",
            events.sensitive_columns,
            list(sources.events.collect_schema().names()),
        )
        present = (
            sources.events.select(pl.col(events.type).cast(pl.String).unique())
            .collect()
            .to_series()
            .drop_nulls()
            .to_list()
        )
        _require_names("[sources.events] sensitive_types", events.sensitive_types, present)
    known = classified_columns(config) | {sensitivity_key(c) for c in config.columns.unclassified}
    derived = [
        c
        for c in contacts
        if sensitivity_key(c) not in known and any(h in sensitivity_key(c) for h in DERIVED_HINTS)
    ]
    return [
        f"contacts column {c!r} looks derived from health data but is not classified: add it "
        "to [columns] sensitive (or not_sensitive if it is not)"
        for c in derived
    ]


def clinical_warnings(config: ProjectConfig, sources: Sources) -> list[str]:
    """Contacts columns, event columns and event types whose names read as clinical or as
    a patient's status (department, visit, lifecycle, ...) and that the config classifies
    neither way (docs/policy-rules.md, "Patient status is PHI")."""
    from policies.rules import DERIVED_HINTS, classified_columns, sensitivity_key

    known = classified_columns(config) | {sensitivity_key(c) for c in config.columns.unclassified}
    return [
        f"contacts column {c!r} looks clinical or like a patient's status but is not "
        "classified: add it to [columns] sensitive (or not_sensitive if it is not; "
        'docs/policy-rules.md, "Patient status is PHI")'
        for c in sources.contacts.collect_schema().names()
        if sensitivity_key(c) not in known
        and looks_clinical(c)
        and not any(h in sensitivity_key(c) for h in DERIVED_HINTS)  # warned already
    ] + _clinical_events(config, sources)


def _clinical_events(config: ProjectConfig, sources: Sources) -> list[str]:
    """Event columns and event types (those seen in at least 10 events, at most 200 kinds)
    that look clinical or like a patient's status and are classified neither way."""
    import polars as pl

    from policies.rules import sensitivity_key

    events = config.sources.events
    if events is None or sources.events is None:
        return []
    said = {
        sensitivity_key(n)
        for n in (
            *events.sensitive_columns, *events.not_sensitive_columns,
            *events.unclassified_columns, events.contact_id, events.type, events.time,
        )
    }  # fmt: skip
    out = [
        f"event column {c!r} looks clinical but is not classified: add it to [sources.events] "
        "sensitive_columns (or not_sensitive_columns if it is not)"
        for c in sources.events.collect_schema().names()
        if sensitivity_key(c) not in said and looks_clinical(c)
    ]
    counts = (
        sources.events.group_by(pl.col(events.type).cast(pl.String).alias("t"))
        .len()
        .filter(pl.col("t").is_not_null() & (pl.col("len") >= 10))
        .head(201)
        .collect()
    )
    if counts.height > 200:
        return out
    typed = {
        sensitivity_key(t)
        for t in (*events.sensitive_types, *events.not_sensitive_types, *events.unclassified_types)
    }
    out += [
        f"event type {t!r} looks clinical or like a patient's status (a visit is PHI for a "
        "covered entity) but is not classified: add it to [sources.events] sensitive_types "
        '(or not_sensitive_types if it is not; docs/policy-rules.md, "Patient status is PHI")'
        for t in sorted(counts["t"].to_list())
        if sensitivity_key(t) not in typed and looks_clinical(t)
    ]
    return out


def _require_names(setting: str, wanted: list[str], present: list[str]) -> None:
    from policies.rules import sensitivity_key

    keys = {sensitivity_key(p) for p in present}
    missing = [w for w in wanted if sensitivity_key(w) not in keys]
    if missing:
        shown = ", ".join(sorted(present)[:12]) or "none"
        raise ConfigError(
            f"{setting} lists {missing}, which never occur in the data (present: {shown})",
            "fix the spelling, or remove the entry if the data really has none",
        )
