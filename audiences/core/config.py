"""The project configuration (``audiences.toml``), validated once at load time.

Every model is frozen with ``extra="forbid"``: a misspelt key is an error that
names the file, the key and the fix, never a silently ignored setting. Secrets
never live here — only the *names* of the environment variables that hold them.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from audiences.core.countries import ISO_COUNTRIES
from audiences.core.errors import ConfigError

CONFIG_FILE = "audiences.toml"

SourceFormat = Literal["csv", "parquet", "ndjson"]
SourceKind = Literal["file", "duckdb", "postgres"]
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
ColumnType = Literal["str", "int", "float", "bool", "date", "datetime", "list[str]"]


class IdentityMapping(BaseModel):
    """``[identity]`` in audiences.toml: canonical identifier → CRM column (or None)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    external_id: str | None = None
    email: str | None = None
    phone: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    zip: str | None = None
    city: str | None = None
    state: str | None = None
    country: str | None = None
    birth_date: str | None = None
    gender: str | None = None
    default_country: str = "US"

    @field_validator("default_country")
    @classmethod
    def _iso_alpha2(cls, value: str) -> str:
        code = value.strip().lower()
        if code not in ISO_COUNTRIES:
            raise ValueError(
                f"default_country {value!r} is not an ISO 3166-1 alpha-2 code — "
                "use a two-letter code such as US"
            )
        return code.upper()


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ColumnSpec(Model):
    """A declared column written as a table: ``{type = "date", format = "%m/%d/%Y"}``.

    ``format`` (strftime codes) applies to ``date`` and ``datetime`` columns only.
    """

    type: ColumnType
    format: str | None = Field(default=None, min_length=2)

    @model_validator(mode="after")
    def _format_for_dates(self) -> ColumnSpec:
        if self.format is not None:
            if self.type not in ("date", "datetime"):
                raise ValueError(f"format applies to date and datetime columns, not {self.type}")
            if "%" not in self.format:
                raise ValueError(
                    f"format {self.format!r} has no strftime code — write e.g. %m/%d/%Y"
                )
        return self


class SourceConfig(Model):
    """One CRM table: a file, or a table (or view) in a database.

    ``kind = "file"`` (the default) reads ``path`` (relative to the project folder);
    ``kind = "duckdb"`` reads ``table`` in the DuckDB database file ``path``;
    ``kind = "postgres"`` reads ``table`` in the PostgreSQL database whose connection URI
    is in the environment variable ``uri_env`` (the URI itself is never written here).
    """

    kind: SourceKind = "file"
    path: str | None = None
    table: str | None = Field(default=None, min_length=1)
    db_schema: str | None = Field(default=None, alias="schema", min_length=1)
    uri_env: str | None = Field(default=None, pattern=_ENV_NAME)
    version_column: str | None = Field(
        default=None,
        min_length=1,
        description="a database table's column that grows with every change (a snapshot "
        "id, an updated_at kept by a trigger): the dataset id is then read from it and "
        "the row count instead of digesting every row",
    )
    format: SourceFormat | None = None
    separator: str = Field(",", min_length=1, max_length=1)
    list_separator: str = Field(";", min_length=1, max_length=1)
    columns: dict[str, ColumnType | ColumnSpec] = Field(default_factory=dict)
    case_insensitive: list[str] = Field(
        default_factory=list,
        description="text columns whose values compare without regard to case "
        "(segment conditions and validate's value checks)",
    )

    @model_validator(mode="after")
    def _kind_fields(self) -> SourceConfig:
        needed = {"file": ("path",), "duckdb": ("path", "table"), "postgres": ("uri_env", "table")}
        allowed = {
            "file": {"path"},
            "duckdb": {"path", "table", "db_schema", "version_column"},
            "postgres": {"uri_env", "table", "db_schema", "version_column"},
        }[self.kind]
        for key in needed[self.kind]:
            if getattr(self, key) is None:
                raise ValueError(f'a kind = "{self.kind}" source needs {key}')
        for key in ("path", "table", "db_schema", "uri_env", "version_column"):
            if key not in allowed and getattr(self, key) is not None:
                shown = "schema" if key == "db_schema" else key
                raise ValueError(f'{shown} does not apply to a kind = "{self.kind}" source')
        return self

    @property
    def is_database(self) -> bool:
        return self.kind != "file"

    @property
    def label(self) -> str:
        """Where the source is, for messages: a file name or a table (never a URI)."""
        if self.kind == "file":
            return Path(self.path or "").name
        table = f"{self.db_schema}.{self.table}" if self.db_schema else str(self.table)
        if self.kind == "duckdb":
            return f"table {table} in {Path(self.path or '').name}"
        return f"table {table} in the PostgreSQL database of ${self.uri_env}"

    def file(self) -> str:
        """The source's file (its database file for DuckDB); a ConfigError for PostgreSQL."""
        if self.path is None:
            raise ConfigError(
                f"a {self.kind} source has no file", "this command reads file sources only"
            )
        return self.path

    def column_specs(self) -> dict[str, ColumnSpec]:
        """Every declared column as a :class:`ColumnSpec` (the plain ``"date"`` form too)."""
        return {
            name: spec if isinstance(spec, ColumnSpec) else ColumnSpec(type=spec)
            for name, spec in self.columns.items()
        }

    @property
    def resolved_format(self) -> SourceFormat:
        if self.format:
            return self.format
        suffix = Path(self.path or "").suffix.lower()
        formats: dict[str, SourceFormat] = {
            ".csv": "csv",
            ".parquet": "parquet",
            ".pq": "parquet",
            ".ndjson": "ndjson",
            ".jsonl": "ndjson",
        }
        return formats.get(suffix, "csv")


class ContactsSource(SourceConfig):
    id: str = "contact_id"


class EventsSource(SourceConfig):
    contact_id: str = "contact_id"
    type: str = "event_type"
    time: str = "event_time"
    sensitive_types: list[str] = Field(
        default_factory=list,
        description="event types whose mere presence is PHI (e.g. portal_login)",
    )
    sensitive_columns: list[str] = Field(
        default_factory=list,
        description="event columns that reveal health information (e.g. department)",
    )
    # Declared not health data (for a covered entity a visit is PHI: docs/policy-rules.md).
    not_sensitive_types: list[str] = Field(default_factory=list)
    not_sensitive_columns: list[str] = Field(default_factory=list)
    # Written by `init --from` for the user to decide: `validate` fails until each entry is
    # moved to sensitive_* or not_sensitive_*; the gate counts them as sensitive meanwhile.
    unclassified_types: list[str] = Field(default_factory=list)
    unclassified_columns: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_class(self) -> EventsSource:
        _disjoint(
            "[sources.events]",
            sensitive_types=self.sensitive_types,
            not_sensitive_types=self.not_sensitive_types,
            unclassified_types=self.unclassified_types,
        )
        _disjoint(
            "[sources.events]",
            sensitive_columns=self.sensitive_columns,
            not_sensitive_columns=self.not_sensitive_columns,
            unclassified_columns=self.unclassified_columns,
        )
        return self


def _disjoint(table: str, **lists: list[str]) -> None:
    """No name in two of the lists (a name has one class)."""
    items = list(lists.items())
    for i, (first, a) in enumerate(items):
        for second, b in items[i + 1 :]:
            clash = sorted(set(a) & set(b))
            if clash:
                raise ValueError(f"{table} lists {clash} in both {first} and {second} — keep one")


class Sources(Model):
    contacts: ContactsSource
    events: EventsSource | None = None

    @model_validator(mode="after")
    def _one_database(self) -> Sources:
        """A segment joins contacts and events inside the database: one database for both."""
        events = self.events
        if events is None or not (self.contacts.is_database or events.is_database):
            return self
        where = ("kind", "path", "uri_env", "db_schema")
        if any(getattr(self.contacts, k) != getattr(events, k) for k in where):
            raise ValueError(
                "sources.contacts and sources.events must be tables of the same database "
                "(same kind, path or uri_env, and schema) when either is a database table"
            )
        return self


class ColumnRoles(Model):
    sensitive: list[str] = Field(default_factory=list)
    quasi_identifiers: list[str] = Field(default_factory=list)
    # Contacts columns declared *not* health data (hipaa-marketing requires every column a
    # segment reads to be classified: sensitive, not_sensitive or an identity/consent role).
    not_sensitive: list[str] = Field(default_factory=list)
    # Written by `init --from` for the user to decide (see EventsSource.unclassified_types).
    unclassified: list[str] = Field(default_factory=list)


# The consent columns that may declare their own words (the per-purpose consents the
# jurisdiction packs read); the others read the shared vocabulary (audiences.crm.consent).
OWN_WORDS_ROLES = (
    "share_health_data",
    "explicit_health_marketing",
    "limit_sensitive_pi",
    "opt_out_of_sharing",
)


def clean_word(text: str) -> str:
    """A consent word as compared: trimmed, lower case, each run of spaces, ``_`` and ``-``
    one space (``Opted-In`` → ``opted in``), as ``audiences.crm.consent.cleaned_word``."""
    return re.sub(r"[\s_\-]+", " ", text.strip().lower())


class ConsentWords(Model):
    """A per-purpose consent column's own words: what it writes for granted (for a flag:
    set) and for denied (not set). Nothing else counts as either."""

    granted: list[str] = Field(min_length=1)
    denied: list[str] = Field(min_length=1)

    @model_validator(mode="after")
    def _apart(self) -> ConsentWords:
        both = sorted({clean_word(w) for w in self.granted} & {clean_word(w) for w in self.denied})
        if both:
            raise ValueError(f"{both} are both granted and denied — give each word one meaning")
        if any(not clean_word(w) for w in [*self.granted, *self.denied]):
            raise ValueError("an empty word — an empty value already counts as unknown")
        return self


class ConsentColumns(Model):
    """CRM columns that carry consent, authorization and suppression facts."""

    marketing_opt_in: str | None = None
    do_not_contact: str | None = None
    deceased: str | None = None
    hipaa_authorization_date: str | None = None
    hipaa_authorization_expires: str | None = None
    hipaa_authorization_revoked: str | None = None
    ad_personalization: str | None = None
    ad_user_data: str | None = None
    # Jurisdiction packs (docs/policy-rules.md): consent to share consumer health data
    # (Washington MHMDA), explicit consent to health marketing (GDPR Art. 9), "limit use
    # of my sensitive PI" and opt-out of sharing / Global Privacy Control (CCPA/CPRA).
    share_health_data: str | None = None
    explicit_health_marketing: str | None = None
    limit_sensitive_pi: str | None = None
    opt_out_of_sharing: str | None = None
    # Washington MHMDA: the signed authorization to *sell* consumer health data (RCW
    # 19.373.070), read for destinations whose `basis = "sale"`: signed on, expires on
    # (at most one year after signing, whatever this column says), revoked on.
    mhmda_sale_authorization_date: str | None = None
    mhmda_sale_authorization_expires: str | None = None
    mhmda_sale_authorization_revoked: str | None = None
    # Their own words, per purpose: [consent.words.share_health_data] granted = [...] …
    words: dict[str, ConsentWords] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _words_of_mapped_purposes(self) -> ConsentColumns:
        for role in self.words:
            if role not in OWN_WORDS_ROLES:
                raise ValueError(
                    f"[consent.words.{role}]: only the per-purpose consent columns "
                    f"({', '.join(OWN_WORDS_ROLES)}) take their own words"
                )
            if getattr(self, role) is None:
                raise ValueError(f"[consent.words.{role}] but [consent] {role} is not set")
        return self

    def vocabulary(self, role: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
        """(granted, denied) words of a column with its own words, cleaned; else None."""
        own = self.words.get(role)
        if own is None:
            return None
        return tuple(map(clean_word, own.granted)), tuple(map(clean_word, own.denied))


class SuppressionList(Model):
    """A CSV of people who must never be targeted (emails, phones or CRM ids)."""

    path: str
    column: str
    kind: Literal["email", "phone", "external_id"]


class PolicyConfig(Model):
    pack: str = "baseline"
    suppression: list[SuppressionList] = Field(default_factory=list)
    # Several packs: the first is the base (applies to everyone); each further one is a
    # jurisdiction pack whose rules apply to the people of its jurisdiction only.
    packs: list[str] | None = Field(default=None, min_length=1)
    # A CRM column whose codes (US-WA, EEA, UK, DE …) override the derived jurisdiction.
    jurisdiction_column: str | None = None

    @model_validator(mode="after")
    def _one_base(self) -> PolicyConfig:
        if self.packs and "pack" in self.model_fields_set and self.pack != self.packs[0]:
            raise ValueError(
                f"pack {self.pack!r} and packs {self.packs!r} disagree on the base pack — "
                "keep only packs (its first entry is the base)"
            )
        return self

    @property
    def pack_specs(self) -> tuple[str, ...]:
        """The packs in force, base first."""
        return tuple(self.packs) if self.packs else (self.pack,)


class InsightsConfig(Model):
    """Dimensions marketers may break DP counts down by, with their public key sets."""

    dimensions: list[str] = Field(default_factory=lambda: ["age_band", "state", "sex"])
    epsilon: float = Field(default=1.0, gt=0, allow_inf_nan=False)


class ProjectSection(Model):
    name: str = "audiences"
    state_dir: str = ".audiences"
    state_db: str | None = None
    #: Who runs the builds, as compliance reports name them (e.g. "Marketing ops — J. Doe");
    #: unset, reports fall back to the OS user that ran the build.
    operator: str | None = Field(default=None, min_length=1, max_length=200)


class ReportSection(Model):
    """``[report]``: ``templates`` is a folder of the organisation's own compliance-report
    templates (``report.html.j2``, ``report.md.j2``), relative to the project folder."""

    templates: str | None = None


class DestinationSpec(BaseModel):
    """A destination's settings; ``kind`` picks the connector whose model validates the rest."""

    model_config = ConfigDict(frozen=True, extra="allow")
    kind: str
    # What the transfer is in law: "share" (the default: disclosing to a platform that
    # processes the list for the advertiser) or "sale" (the recipient pays or gives other
    # valuable consideration for the data: a data broker, a co-marketing partner). A sale
    # of consumer health data needs a signed authorization under wa-mhmda
    # (docs/policy-rules.md, "Sale basis"); the basis is part of what an approval binds.
    basis: Literal["share", "sale"] = "share"


class Approvers(Model):
    """Compliance officers whose Ed25519 public keys may sign approvals."""

    require_approval: bool | None = None
    keys: dict[str, str] = Field(default_factory=dict)


class ProjectConfig(Model):
    project: ProjectSection = Field(default_factory=ProjectSection)
    sources: Sources
    identity: IdentityMapping
    columns: ColumnRoles = Field(default_factory=ColumnRoles)
    consent: ConsentColumns = Field(default_factory=ConsentColumns)
    destinations: dict[str, DestinationSpec] = Field(default_factory=dict)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    insights: InsightsConfig = Field(default_factory=InsightsConfig)
    approvers: Approvers = Field(default_factory=Approvers)
    report: ReportSection = Field(default_factory=ReportSection)

    # Set by load_config; not part of the file.
    root: Path = Field(default=Path("."), exclude=True)

    @field_validator("destinations")
    @classmethod
    def _destination_names(cls, value: dict[str, DestinationSpec]) -> dict[str, DestinationSpec]:
        for name in value:
            if not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"destination name {name!r} must be letters, digits, - or _")
        return value

    @model_validator(mode="after")
    def _roles_disjoint(self) -> ProjectConfig:
        clash = set(self.columns.sensitive) & set(self.columns.quasi_identifiers)
        if clash:
            raise ValueError(
                f"columns {sorted(clash)} are listed as both sensitive and quasi_identifiers"
            )
        both = set(self.columns.sensitive) & set(self.columns.not_sensitive)
        if both:
            raise ValueError(
                f"columns {sorted(both)} are listed as both sensitive and not_sensitive"
            )
        _disjoint(
            "[columns]",
            sensitive=self.columns.sensitive,
            not_sensitive=self.columns.not_sensitive,
            unclassified=self.columns.unclassified,
        )
        return self

    # ---- paths -------------------------------------------------------------------
    def path(self, relative: str) -> Path:
        p = Path(relative).expanduser()
        return p if p.is_absolute() else self.root / p

    @property
    def state_dir(self) -> Path:
        return self.path(self.project.state_dir)

    @property
    def state_db(self) -> Path:
        return (
            self.path(self.project.state_db)
            if self.project.state_db
            else self.state_dir / "state.db"
        )

    @property
    def segments_dir(self) -> Path:
        return self.root / "segments"

    @property
    def policies_dir(self) -> Path:
        return self.root / "policies"

    def destination(self, name: str) -> DestinationSpec:
        try:
            return self.destinations[name]
        except KeyError:
            known = ", ".join(sorted(self.destinations)) or "none"
            raise ConfigError(
                f"unknown destination {name!r} (configured: {known})",
                f"add [destinations.{name}] to {CONFIG_FILE} or fix the name",
            ) from None


def _location(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if not (isinstance(p, str) and p.startswith("function-"))]
    return ".".join(parts) if parts else "(top level)"


def _explain(exc: ValidationError, data: dict[str, Any]) -> tuple[str, str]:
    # A misspelt key also makes the real one "missing": report the misspelling first.
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    err = errors[0]
    loc = _location(tuple(err["loc"]))
    if err["type"] == "extra_forbidden":
        key = str(err["loc"][-1])
        parent: Any = data
        for part in err["loc"][:-1]:
            parent = parent.get(part, {}) if isinstance(parent, dict) else {}
        return (
            f"unknown key {loc!r}",
            _suggest_key(key, err["loc"][:-1]) or "remove it or check the spelling",
        )
    if err["type"] == "missing":
        return f"missing key {loc!r}", "add it (see `audiences init` for a working example)"
    more = f" (and {len(exc.errors()) - 1} more problems)" if len(exc.errors()) > 1 else ""
    return f"{loc}: {err['msg']}{more}", "fix the value"


def _suggest_key(key: str, parent_loc: tuple[Any, ...]) -> str | None:
    model: Any = ProjectConfig
    for part in parent_loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return None
        model = field.annotation
    fields = list(getattr(model, "model_fields", {}))
    close = difflib.get_close_matches(key, fields, n=1)
    return f"did you mean {close[0]!r}?" if close else None


def load_config(path: Path | str = CONFIG_FILE) -> ProjectConfig:
    """Read and validate ``audiences.toml``; every problem is a one-line ConfigError."""
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_FILE
    if not path.exists():
        raise ConfigError(
            f"no {path.name} at {path.parent}",
            "run `audiences init DIR` to create a project, or pass --project DIR",
        )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))  # Notepad writes a BOM
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"malformed TOML: {exc}", "fix the syntax", where=str(path)) from None
    except UnicodeDecodeError:
        raise ConfigError("file is not UTF-8", "save it as UTF-8", where=str(path)) from None
    try:
        config = ProjectConfig.model_validate(data)
    except ValidationError as exc:
        what, fix = _explain(exc, data)
        raise ConfigError(what, fix, where=str(path)) from None
    config = config.model_copy(update={"root": path.parent.resolve()})
    _validate_destinations(config, path)
    return config


def _validate_destinations(config: ProjectConfig, path: Path) -> None:
    from audiences.core.plugins import destination_config

    for name, spec in config.destinations.items():
        try:
            destination_config(spec)
        except ConfigError as exc:
            raise ConfigError(
                f"[destinations.{name}] {exc.what}", exc.fix, where=str(path)
            ) from None
