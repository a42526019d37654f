"""Identifier normalization and SHA-256 hashing per ad-platform layout.

Everything here builds polars expressions: no Python runs per row. The rules follow
the platforms' documentation (summed up below; the layouts' columns are in
docs/internals.md, "Hashed layouts"), not the SDKs' helpers, which are known to be
wrong (the Meta SDK drops accented letters, turns ``United States`` into ``un``, keeps
spaces in ZIPs and hashes empty cells; the google-ads example helper does not lowercase).

Per identifier a row is in exactly one *outcome*: ``empty`` (null, blank, or a
placeholder like ``N/A``), ``already_hashed`` (64 hex characters in an email, phone or
name column: passed through lowercased, never hashed twice), ``valid``, ``defaulted``
(country only: a blank country takes ``default_country``), or an invalid reason such as
``no_at_sign``. Empty and invalid values come out as null: nothing empty is ever hashed
and nothing invalid is ever uploaded. In the hashed layouts (what is uploaded and what the
gate counts) an e-mail at a domain that cannot hold a mailbox (``none@example.com``,
``x@noemail.test``: :data:`RESERVED_EMAIL_DOMAINS`) is invalid too (``reserved_domain``);
:func:`normalized_layout`, which links records, keeps it. :func:`identifier_quality` counts the outcomes;
it never returns values.

Meta (``meta``) and Google (``google_ads``) differ in the details:

* email: trim + lowercase; Google also removes dots and ``+suffix`` from the local part
  of ``gmail.com`` / ``googlemail.com`` addresses.
* phone: the digits with the country calling code and no leading zeros (Meta), the same
  with a leading ``+`` (Google, E.164). National numbers take the calling code of the
  row's country, else of ``default_country``; ``00`` (and ``011`` in NANP countries)
  international prefixes are removed.
* names: Meta lowercases and keeps letters only (``Smith-Jones`` → ``smithjones``,
  ``José`` → ``josé``); Google lowercases, trims and collapses inner whitespace.
* names, cities, states and countries are NFC-normalized, so ``José`` hashes the same
  whether the CRM stored ``é`` or ``e`` + combining accent (emails are not: NFC would
  double the cost of the email path for the rare non-ASCII address).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal, Protocol

import polars as pl
import polars_hash as plh

# re-exported: docs/internals.md documents IdentityMapping as part of this module
from audiences.core.config import IdentityMapping as IdentityMapping
from audiences.core.countries import ISO_COUNTRIES
from audiences.core.errors import ConfigError, DataError, InternalError

Layout = Literal["meta", "google_ads"]

LAYOUTS: dict[str, tuple[str, ...]] = {
    "meta": (
        "EXTERN_ID",
        "EMAIL",
        "PHONE",
        "FN",
        "LN",
        "ZIP",
        "CT",
        "ST",
        "COUNTRY",
        "DOBY",
        "DOBM",
        "DOBD",
        "GEN",
    ),
    "google_ads": (
        "hashed_email",
        "hashed_phone_number",
        "hashed_first_name",
        "hashed_last_name",
        "country_code",
        "postal_code",
    ),
}

# Layout columns sent as plain text; every other layout column is SHA-256 lowercase hex.
PLAIN_COLUMNS = frozenset({"EXTERN_ID", "country_code", "postal_code"})

IDENTITY_FIELDS = (
    "external_id",
    "email",
    "phone",
    "first_name",
    "last_name",
    "zip",
    "city",
    "state",
    "country",
    "birth_date",
    "gender",
)

# Outcomes that are not an invalid reason.
OUTCOME_STATUSES = ("empty", "already_hashed", "valid", "defaulted")

# ---------------------------------------------------------------------------------------
# Reference tables (compact; keys are lowercase letters only).


_COUNTRY_ALIASES = {  # ISO code: other spellings (lowercase letters only)
    "us": "usa unitedstates unitedstatesofamerica america estadosunidos eeuu",
    "gb": "uk gbr unitedkingdom greatbritain britain england scotland wales northernireland",
    "ca": "can canada",
    "mx": "mex mexico méxico",
    "pr": "pri puertorico",
    "de": "deu germany deutschland",
    "fr": "fra france",
    "es": "esp spain españa espana",
    "it": "ita italy italia",
    "ie": "irl ireland",
    "nl": "nld netherlands thenetherlands holland",
    "cn": "chn china peoplesrepublicofchina prc",
    "in": "ind india",
    "jp": "jpn japan",
    "kr": "kor korea southkorea republicofkorea",
    "vn": "vnm vietnam",
    "ht": "hti haiti haïti",
    "ru": "rus russia russianfederation",
    "ph": "phl philippines",
    "br": "bra brazil brasil",
    "au": "aus australia",
    "nz": "nzl newzealand",
    "do": "dom dominicanrepublic",
    "jm": "jam jamaica",
    "cu": "cub cuba",
    "sv": "slv elsalvador",
    "gt": "gtm guatemala",
    "hn": "hnd honduras",
    "co": "col colombia",
    "ve": "ven venezuela",
    "pe": "per peru perú",
    "ec": "ecu ecuador",
    "ar": "arg argentina",
    "cl": "chl chile",
    "pl": "pol poland",
    "pt": "prt portugal",
    "gr": "grc greece",
    "il": "isr israel",
    "ng": "nga nigeria",
    "ke": "ken kenya",
    "za": "zaf southafrica",
    "eg": "egy egypt",
    "pk": "pak pakistan",
    "bd": "bgd bangladesh",
    "tw": "twn taiwan",
    "hk": "hkg hongkong",
    "sg": "sgp singapore",
    "th": "tha thailand",
    "ch": "che switzerland",
    "se": "swe sweden",
    "no": "nor norway",
    "dk": "dnk denmark",
    "fi": "fin finland",
    "be": "bel belgium",
    "at": "aut austria",
    "ua": "ukr ukraine",
    "tr": "tur turkey türkiye turkiye",
    "ir": "irn iran",
    "iq": "irq iraq",
    "sa": "sau saudiarabia",
    "ae": "are uae unitedarabemirates",
    "gu": "gum guam",
    "vi": "vir usvirginislands",
}  # fmt: skip

COUNTRY_CODES: dict[str, str] = {code: code for code in sorted(ISO_COUNTRIES)}
COUNTRY_CODES.update(
    {alias: code for code, aliases in _COUNTRY_ALIASES.items() for alias in aliases.split()}
)

_NANP_COUNTRIES = "us ca pr gu vi as mp ag ai bb bm bs dm do gd jm kn ky lc ms sx tc tt vc vg"
CALLING_CODES: dict[str, str] = dict.fromkeys(_NANP_COUNTRIES.split(), "1")
CALLING_CODES.update(
    {
        "gb": "44", "ie": "353", "fr": "33", "de": "49", "es": "34", "it": "39",
        "pt": "351", "nl": "31", "be": "32", "ch": "41", "at": "43", "se": "46",
        "no": "47", "dk": "45", "fi": "358", "pl": "48", "cz": "420", "gr": "30",
        "ro": "40", "hu": "36", "ua": "380", "ru": "7", "kz": "7", "tr": "90",
        "il": "972", "sa": "966", "ae": "971", "eg": "20", "ng": "234", "ke": "254",
        "za": "27", "gh": "233", "et": "251", "ma": "212", "in": "91", "pk": "92",
        "bd": "880", "cn": "86", "hk": "852", "tw": "886", "jp": "81", "kr": "82",
        "vn": "84", "ph": "63", "th": "66", "my": "60", "sg": "65", "id": "62",
        "au": "61", "nz": "64", "mx": "52", "gt": "502", "sv": "503", "hn": "504",
        "ni": "505", "cr": "506", "pa": "507", "ht": "509", "cu": "53", "co": "57",
        "ve": "58", "pe": "51", "ec": "593", "br": "55", "ar": "54", "cl": "56",
        "bo": "591", "py": "595", "uy": "598", "ir": "98", "iq": "964", "af": "93",
        "lb": "961", "jo": "962", "sy": "963", "np": "977", "lk": "94", "mm": "95",
        "kh": "855", "la": "856", "sm": "378", "va": "39",
    }
)  # fmt: skip
# Calling codes whose national numbers keep their leading 0 (Italy, San Marino); in
# NANP (+1) a leading 0 is an invalid area code, not a trunk prefix.
_KEEPS_LEADING_ZERO = ("39", "378")

# Countries that use US ZIP codes and US state codes.
US_POSTAL_COUNTRIES = ("us", "pr", "gu", "vi", "as", "mp")

_US_STATE_NAMES: dict[str, tuple[str, ...]] = {
    "al": ("alabama",), "ak": ("alaska",), "az": ("arizona",), "ar": ("arkansas",),
    "ca": ("california",), "co": ("colorado",), "ct": ("connecticut",),
    "de": ("delaware",), "dc": ("districtofcolumbia", "washingtondc"),
    "fl": ("florida",), "ga": ("georgia",), "hi": ("hawaii",), "id": ("idaho",),
    "il": ("illinois",), "in": ("indiana",), "ia": ("iowa",), "ks": ("kansas",),
    "ky": ("kentucky",), "la": ("louisiana",), "me": ("maine",), "md": ("maryland",),
    "ma": ("massachusetts",), "mi": ("michigan",), "mn": ("minnesota",),
    "ms": ("mississippi",), "mo": ("missouri",), "mt": ("montana",),
    "ne": ("nebraska",), "nv": ("nevada",), "nh": ("newhampshire",),
    "nj": ("newjersey",), "nm": ("newmexico",), "ny": ("newyork",),
    "nc": ("northcarolina",), "nd": ("northdakota",), "oh": ("ohio",),
    "ok": ("oklahoma",), "or": ("oregon",), "pa": ("pennsylvania",),
    "ri": ("rhodeisland",), "sc": ("southcarolina",), "sd": ("southdakota",),
    "tn": ("tennessee",), "tx": ("texas",), "ut": ("utah",), "vt": ("vermont",),
    "va": ("virginia",), "wa": ("washington",), "wv": ("westvirginia",),
    "wi": ("wisconsin",), "wy": ("wyoming",), "pr": ("puertorico",), "gu": ("guam",),
    "vi": ("virginislands", "usvirginislands"), "as": ("americansamoa",),
    "mp": ("northernmarianaislands",), "aa": (), "ae": (), "ap": (),
}  # fmt: skip
US_STATES: dict[str, str] = {code: code for code in _US_STATE_NAMES}
US_STATES.update({name: code for code, names in _US_STATE_NAMES.items() for name in names})

GENDERS: dict[str, str] = {"m": "m", "male": "m", "man": "m", "f": "f", "female": "f", "woman": "f"}

GMAIL_DOMAINS = ("gmail.com", "googlemail.com")
_GMAIL = "^[^@]*@(?:" + "|".join(re.escape(domain) for domain in GMAIL_DOMAINS) + ")$"

_SHA256_HEX = r"^[0-9a-fA-F]{64}$"
# Values that mean "nothing here": compared after trim + lowercase, or as a regex.
PLACEHOLDERS = (
    "n/a", "na", "n.a.", "n.a", "none", "null", "nil", "unknown",
    "-", "--", "---", ".", "..", "...", "?", "??", "???",
)  # fmt: skip
_PLACEHOLDER = "(?i)^(?:" + "|".join(re.escape(value) for value in PLACEHOLDERS) + ")$"
# A domain label: letters/digits of any script (anything but whitespace and ASCII
# punctuation) with inner hyphens. Negated ASCII classes keep the regex fast (\p{L}
# classes in nested repetitions are ~20× slower in the Rust regex engine).
_LABEL_END = r"[^\s!-/:-@\[-`{-~]"
_LABEL_MID = r"[^\s!-,./:-@\[-`{-~]"
_DOMAIN = (
    rf"@(?:{_LABEL_END}(?:{_LABEL_MID}*{_LABEL_END})?\.)+(?:{_LABEL_END}{{2,63}}|xn--[a-z0-9-]+)$"
)
# Domains that cannot hold a mailbox anyone uses: the reserved names of RFC 2606 and RFC
# 6761 (example.com, .test, .invalid…), mDNS's .local (RFC 6762), .onion (RFC 7686),
# home.arpa (RFC 8375) and .internal (ICANN, 2024). An address there is a CRM's
# placeholder (``none@example.com``, ``x@noemail.test``): no platform user has it, so it
# is never uploaded nor counts as an identifier (a segment padded with such people would
# pass ``min_size`` as a list of fewer people than it holds).
RESERVED_EMAIL_DOMAINS = (
    "example.com", "example.net", "example.org", "example", "test", "invalid", "localhost",
    "local", "onion", "internal", "home.arpa",
)  # fmt: skip


# A raw e-mail (any case, spaces around it) whose trimmed, lowercase address passes the
# address check of every layout: a local part, the domain as ``_DOMAIN``, and a local part
# that keeps a character once Google drops a gmail address's dots and ``+tag`` (it starts,
# after any dots, with neither ``+`` nor ``@``). A superset test's complement: a value
# that does not match may still be valid.
_PLAINLY_VALID_EMAIL = rf"(?i)^\s*\.*[^@\s.+][^@\s]*{_DOMAIN.removesuffix('$')}\s*$"


def plainly_valid_email(raw: pl.Expr) -> pl.Expr:
    """True only for a raw value that every layout normalizes to a valid e-mail address
    (:meth:`_Normalizer._email_field`); false or null says nothing (a hashed value, a
    placeholder, an address of unusual spelling). It does not judge a reserved domain."""
    return raw.str.contains(_PLAINLY_VALID_EMAIL)


# A raw phone (spaces around it) that the phone normalization (:meth:`_Builder.phone`)
# makes a valid number in every layout: ten digits of a NANP number — an area code and an
# exchange, with spaces, dots, hyphens or brackets between the groups — after ``+1`` or
# ``001`` (whatever the row's country), or alone or after ``1`` where the row's country
# has a calling code (then its national number takes that code: 11 to 14 digits, none
# with a leading 0, and NANP's ``1`` only where it is NANP). ASCII digits only: the
# normalization keeps ``[0-9]``. A superset test's complement, as the e-mail's.
_NANP_GROUPS = r"\(?[2-9][0-9]{2}\)?[ .\-]*[0-9]{3}[ .\-]*[0-9]{4}\s*$"
_PLAINLY_VALID_PHONE_ANYWHERE = rf"^\s*(?:\+|00)1[ .\-]*{_NANP_GROUPS}"
_PLAINLY_VALID_PHONE_NATIONAL = rf"^\s*(?:1[ .\-]*)?{_NANP_GROUPS}"


def plainly_valid_phone(raw: pl.Expr, calling_code_known: pl.Expr) -> pl.Expr:
    """True only for a raw phone that every layout normalizes to a valid number;
    ``calling_code_known``: :func:`calling_code_known` of the row (or the same answers
    looked up per distinct country). False or null says nothing."""
    anywhere = raw.str.contains(_PLAINLY_VALID_PHONE_ANYWHERE)
    return anywhere | (raw.str.contains(_PLAINLY_VALID_PHONE_NATIONAL) & calling_code_known)


def calling_code_known(identity: IdentitySource) -> pl.Expr:
    """True where the phone normalization gives a national number a calling code: that of
    the row's country, else of ``default_country`` (the same expression it uses)."""
    builder = _Builder(identity, "meta", schema=None, as_of=None, staged=False)
    return builder.country_rules()[2].is_not_null()


# a normalized e-mail at a reserved domain or a subdomain of one: ``@`` or ``.`` then the
# domain, at the very end (``$`` matches only there: no multi-line mode)
_RESERVED_SUFFIX = (
    r"[@.](?:" + "|".join(re.escape(domain) for domain in RESERVED_EMAIL_DOMAINS) + r")$"
)


def reserved_email(email: pl.Expr) -> pl.Expr:
    """True for a normalized (trimmed, lowercase) e-mail at a reserved domain.

    One regular expression anchored at the end: 22 ``ends_with`` tests (each domain after
    ``@`` or ``.``) took 62–102 ms for a column of 342k lowercase addresses, the expression
    16–18 ms, and the release's hashing of those members 961 → 842 ms (medians;
    ``benchmarks/README.md``, "The reserved-domain test as one expression")."""
    return email.str.contains(_RESERVED_SUFFIX)


_PHONE_EXTENSION = r"(?i)\s*(?:ext\.?|extension|x|#)\s*[0-9]{1,6}$"
_NON_LETTER = r"[^\p{L}\p{M}]"
_NON_ASCII = r"[^\x00-\x7f]"
_TEMP = "__audiences_"


# ---------------------------------------------------------------------------------------
# Identity mapping


class IdentitySource(Protocol):
    """What the layout functions read from an identity mapping (duck-typed, read-only)."""

    @property
    def external_id(self) -> str | None: ...
    @property
    def email(self) -> str | None: ...
    @property
    def phone(self) -> str | None: ...
    @property
    def first_name(self) -> str | None: ...
    @property
    def last_name(self) -> str | None: ...
    @property
    def zip(self) -> str | None: ...
    @property
    def city(self) -> str | None: ...
    @property
    def state(self) -> str | None: ...
    @property
    def country(self) -> str | None: ...
    @property
    def birth_date(self) -> str | None: ...
    @property
    def gender(self) -> str | None: ...
    @property
    def default_country(self) -> str: ...


# ---------------------------------------------------------------------------------------
# Building blocks


def sha256_hex(expr: pl.Expr) -> pl.Expr:
    """SHA-256 of the UTF-8 bytes of a string expression, lowercase hex; null stays null."""
    return plh.CryptographicHashingNameSpace(expr).sha2_256()


class _Plan:
    """Named intermediate expressions.

    Staged (for LazyFrames): each named expression becomes a temporary column computed
    once, in the first ``with_columns`` stage after its inputs, so a normalized value
    is built once and then only referenced. Inline (for :func:`normalized_exprs`): the
    expressions nest into one expression per output.
    """

    def __init__(self, *, staged: bool) -> None:
        self.staged = staged
        self.stages: list[dict[str, pl.Expr]] = []
        self._level: dict[str, int] = {}

    def let(self, name: str, expr: pl.Expr) -> pl.Expr:
        """The column holding ``expr``. Layouts built on one plan share the intermediates
        they compute alike (the trimmed phone, its digits, ...); a name already given to
        a different expression gets a numbered variant."""
        if not self.staged:
            return expr
        column, n = _TEMP + name, 1
        while column in self._level:
            if self.stages[self._level[column]][column].meta.eq(expr):
                return pl.col(column)
            n += 1
            column = f"{_TEMP}{name}_{n}"
        inputs = [self._level[c] for c in expr.meta.root_names() if c in self._level]
        level = 1 + max(inputs, default=-1)
        if level == len(self.stages):
            self.stages.append({})
        self.stages[level][column] = expr
        self._level[column] = level
        return pl.col(column)

    def apply(self, lf: pl.LazyFrame) -> pl.LazyFrame:
        for stage in self.stages:
            lf = lf.with_columns(**stage)
        return lf


@dataclass(frozen=True)
class _Field:
    """One identifier as expressions.

    ``value``: the normalized value, null unless valid, defaulted or already hashed.
    ``outcome``: ``empty`` / ``already_hashed`` / ``valid`` / ``defaulted`` or the
    invalid reason. ``passthrough``: true where the value is an already-hashed input.
    ``digests``: for fields whose every valid value is in a small known set, value →
    SHA-256 hex, precomputed (a lookup is several times cheaper than hashing per row).
    ``digest``: the SHA-256 column built from the normalized value directly, if known.
    """

    identity_field: str
    value: pl.Expr
    outcome: pl.Expr
    passthrough: pl.Expr
    digests: Mapping[str, str] | None = None
    digest: pl.Expr | None = None

    def with_digests(self, values: Iterable[str]) -> _Field:
        return replace(self, digests=_digests(values))


def _digests(values: Iterable[str]) -> dict[str, str]:
    return {value: hashlib.sha256(value.encode()).hexdigest() for value in values}


def _masked(condition: pl.Expr, expr: pl.Expr, transform: Callable[[pl.Expr], pl.Expr]) -> pl.Expr:
    """``transform(expr)`` where ``condition`` holds, else ``expr``.

    polars evaluates both branches of ``when/then`` on every row; nulling the rows
    that need no work first makes an expensive string transform skip them.
    """
    return pl.coalesce(transform(pl.when(condition).then(expr)), expr)


def _first(cases: Sequence[tuple[pl.Expr, pl.Expr]], otherwise: pl.Expr) -> pl.Expr:
    """The value of the first case whose condition is true, else ``otherwise``."""
    expr = otherwise
    for condition, value in reversed(cases):
        expr = pl.when(condition).then(value).otherwise(expr)
    return expr


def _nfc(expr: pl.Expr) -> pl.Expr:
    """Unicode NFC; ASCII strings (already NFC) skip the work."""
    return _masked(expr.str.contains(_NON_ASCII), expr, lambda e: e.str.normalize("NFC"))


def _letters(lower: pl.Expr) -> pl.Expr:
    """NFC, letters (and combining marks) only, of a lowercase expression."""
    return _nfc(lower).str.replace_all(_NON_LETTER, "")


class _Builder:
    """Builds the field expressions of one layout for one identity mapping."""

    def __init__(
        self,
        identity: IdentitySource,
        layout: Layout,
        *,
        schema: Mapping[str, pl.DataType] | None,
        as_of: dt.date | None,
        staged: bool,
        plan: _Plan | None = None,
        country_codes: Mapping[str, str] | None = None,
        sending: bool = False,
    ) -> None:
        self.identity = identity
        # the values as uploaded (hashed layouts): a placeholder e-mail is no identifier
        # there; normalized values for linking records keep it (two records with one
        # placeholder address may be one person's: never fewer links)
        self.sending = sending
        # raw country value -> ISO code, worked out once per distinct value by the same
        # expressions (see _country_codes); rows look their code up instead
        self.country_codes = country_codes
        self.layout = _check_layout(layout)
        self.schema = schema or {}
        self.as_of = as_of or dt.datetime.now(dt.UTC).date()
        self.plan = plan or _Plan(staged=staged)
        self.default = identity.default_country.strip().lower()
        if self.default not in ISO_COUNTRIES:
            raise ConfigError(
                f"default_country {identity.default_country!r} is not an ISO 3166-1 alpha-2 code",
                "set [identity] default_country to a two-letter code such as US",
            )
        self._country: tuple[pl.Expr, pl.Expr, pl.Expr] | None = None
        self._texts: dict[str, pl.Expr] = {}

    def let(self, name: str, expr: pl.Expr) -> pl.Expr:
        return self.plan.let(name, expr)

    def text(self, field: str) -> pl.Expr:
        """The mapped column as trimmed text (built once per field)."""
        if field not in self._texts:
            column = getattr(self.identity, field)
            expr = pl.col(column).cast(pl.String).str.strip_chars()
            self._texts[field] = self.let(f"{field}_text", expr)
        return self._texts[field]

    def field(
        self,
        name: str,
        text: pl.Expr,
        norm: pl.Expr,
        reasons: Sequence[tuple[pl.Expr, str]],
        *,
        lower: pl.Expr | None = None,
        hashable: bool = False,
        blank_value: pl.Expr | None = None,
        valid: pl.Expr | None = None,
    ) -> _Field:
        """Assemble a field from its trimmed ``text``, normalized value and invalid
        reasons (checked in order). ``valid``, if given, must be true exactly when no
        reason holds: a cheaper single check for the value path."""
        if lower is not None:
            blank = text.is_null() | lower.is_in(("", *PLACEHOLDERS))
        else:
            blank = text.is_null() | (text.str.len_bytes() == 0) | text.str.contains(_PLACEHOLDER)
        blank = self.let(f"{name}_blank", blank)
        passthrough = (
            self.let(f"{name}_hashed", text.str.contains(_SHA256_HEX))
            if hashable
            else pl.lit(False)
        )
        if valid is not None:
            invalid = ~valid
        elif reasons:
            invalid = pl.any_horizontal([condition for condition, _ in reasons])
        else:
            invalid = pl.lit(False)
        if self.plan.staged and (valid is not None or reasons):
            # one column for the value, the digest and every layout whose rules agree
            invalid = self.let(f"{name}_invalid", invalid)
        empty = blank_value if blank_value is not None else pl.lit(None, pl.String)
        passed = lower if lower is not None else text.str.to_lowercase()
        value_cases = [(blank, empty)]
        outcome_cases = [(blank, pl.lit("defaulted" if blank_value is not None else "empty"))]
        if hashable:
            value_cases.append((passthrough, passed))
            outcome_cases.append((passthrough, pl.lit("already_hashed")))
        value_cases.append((invalid, pl.lit(None, pl.String)))
        outcome_cases += [(condition, pl.lit(reason)) for condition, reason in reasons]
        value = _first(value_cases, norm).cast(pl.String)
        # The digest straight from the normalized value (one string column fewer).
        digest = None
        if blank_value is None:
            drop = pl.lit(None, pl.String)
            digest_cases = [(blank, drop), *value_cases[1:-1], (invalid, drop)]
            digest = _first(digest_cases, sha256_hex(norm))
        return _Field(
            name,
            self.let(f"{name}_value", value),
            _first(outcome_cases, pl.lit("valid")),
            passthrough,
            digest=digest,
        )

    def absent(self, name: str) -> _Field:
        none = pl.lit(None, pl.String)
        return _Field(name, none, pl.lit("empty"), pl.lit(False))

    # -- country and what depends on it --------------------------------------------------

    def country_rules(self) -> tuple[pl.Expr, pl.Expr, pl.Expr]:
        """(ISO-2 code or null, code used for rules, calling code), built once."""
        if self._country is None:
            if self.identity.country is None:
                code = pl.lit(None, pl.String)
                rule = pl.lit(self.default)
            else:
                if self.country_codes is not None:
                    key = pl.col(self.identity.country).cast(pl.String)
                    codes: Mapping[str, str] = self.country_codes
                else:
                    key = _letters(self.text("country").str.to_lowercase())
                    codes = COUNTRY_CODES
                code = self.let(
                    "country_code", key.replace_strict(codes, default=None, return_dtype=pl.String)
                )
                rule = self.let("country_rule", pl.coalesce(code, pl.lit(self.default)))
            calling = rule.replace_strict(CALLING_CODES, default=None, return_dtype=pl.String)
            self._country = (code, rule, self.let("country_calling_code", calling))
        return self._country

    def us_postal(self) -> pl.Expr:
        return self.country_rules()[1].is_in(US_POSTAL_COUNTRIES)

    def country(self) -> _Field:
        fallback = pl.lit(self.default)
        if self.identity.country is None:
            field = _Field("country", fallback, pl.lit("defaulted"), pl.lit(False))
        else:
            code = self.country_rules()[0]
            field = self.field(
                "country",
                self.text("country"),
                code,
                [(code.is_null(), "unknown_country")],
                blank_value=fallback,
            )
        if self.layout == "google_ads":
            return replace(field, value=field.value.str.to_uppercase())
        return field.with_digests(sorted(ISO_COUNTRIES))

    # -- identifiers ---------------------------------------------------------------------

    def email(self) -> _Field:
        text = self.text("email")
        lower = self.let("email_lower", text.str.to_lowercase())
        # No NFC here: it would double the cost of the email path and non-ASCII
        # addresses are rare; names and cities are NFC-normalized.
        plain = self._email_field(text, lower, lower)
        assert plain.digest is not None  # (an email has no default value)
        # the digest of the lowercase address, one column for every layout that uses it
        plain = replace(plain, digest=self.let("email_digest", plain.digest))
        if self.layout != "google_ads":
            return plain
        # gmail.com / googlemail.com: drop dots and any +suffix from the local part. Only
        # those rows are normalized, checked and hashed again; the others are the plain
        # address, whose digest the Meta layout computes too.
        ends = pl.any_horizontal(lower.str.ends_with(f"@{domain}") for domain in GMAIL_DOMAINS)
        gmail = self.let("email_gmail", pl.when(ends).then(lower).str.contains(_GMAIL))
        address = pl.when(gmail).then(lower)
        local = address.str.extract(r"^([^+@]*)", 1).str.replace_all(".", "", literal=True)
        domain = address.str.extract(r"(@[^@]*)$", 1)  # the row's own: gmail or googlemail
        google = self._email_field(
            text, lower, self.let("email_gmail_norm", pl.concat_str([local, domain]))
        )
        return _Field(
            "email",
            pl.when(gmail).then(google.value).otherwise(plain.value),
            pl.when(gmail).then(google.outcome).otherwise(plain.outcome),
            plain.passthrough,
            digest=pl.when(gmail).then(google.digest).otherwise(plain.digest),
        )

    def _email_field(self, text: pl.Expr, lower: pl.Expr, email: pl.Expr) -> _Field:
        """The email field of the normalized address ``email``."""
        reasons = [
            (~email.str.contains("@", literal=True), "no_at_sign"),
            (email.str.count_matches("@", literal=True) > 1, "multiple_at_signs"),
            (~email.str.contains(r"^[^@\s]+@"), "bad_local_part"),
            (~email.str.contains(_DOMAIN), "bad_domain"),
        ]
        valid = email.str.contains(rf"^[^@\s]+{_DOMAIN}")
        if self.sending:
            reserved = reserved_email(email)
            reasons.append((reserved, "reserved_domain"))
            valid = valid & ~reserved
        return self.field("email", text, email, reasons, lower=lower, hashable=True, valid=valid)

    def phone(self) -> _Field:
        text = self.text("phone")
        calling_code = self.country_rules()[2]
        number = _masked(
            text.str.contains(r"[A-Za-z#]"), text, lambda e: e.str.replace(_PHONE_EXTENSION, "")
        )
        plus = self.let("phone_plus", number.str.starts_with("+"))
        digits = self.let("phone_digits", number.str.replace_all(r"[^0-9]", ""))
        nanp = calling_code == "1"
        prefix_00 = ~plus & digits.str.starts_with("00")
        prefix_011 = ~plus & nanp & digits.str.starts_with("011")
        national = (
            pl.when(nanp & (digits.str.len_bytes() == 11) & digits.str.starts_with("1"))
            .then(digits)
            .when(nanp | calling_code.is_in(_KEEPS_LEADING_ZERO))
            .then(pl.concat_str([calling_code, digits]))
            .otherwise(pl.concat_str([calling_code, digits.str.strip_chars_start("0")]))
        )
        full = self.let(
            "phone_full",
            pl.when(plus)
            .then(digits)
            .when(prefix_00)
            .then(digits.str.slice(2))
            .when(prefix_011)
            .then(digits.str.slice(3))
            .otherwise(national),
        )
        international = plus | prefix_00 | prefix_011
        length = full.str.len_bytes()
        nanp_number = full.str.starts_with("1")
        reasons = [
            (digits.str.len_bytes() == 0, "no_digits"),
            (~international & calling_code.is_null(), "unknown_calling_code"),
            (full.str.starts_with("0"), "bad_country_code"),
            (nanp_number & (length < 11), "too_short"),
            (nanp_number & (length > 11), "too_long"),
            (nanp_number & ~full.str.contains(r"^1[2-9]"), "bad_area_code"),
            (length < 7, "too_short"),
            (length > 15, "too_long"),
        ]
        value = pl.concat_str([pl.lit("+"), full]) if self.layout == "google_ads" else full
        return self.field("phone", text, value, reasons, hashable=True)

    def name(self, field: str) -> _Field:
        text = self.text(field)
        lower = self.let(f"{field}_lower", text.str.to_lowercase())
        if self.layout == "meta":
            name = _letters(lower)
        else:
            name = _nfc(lower).str.replace_all(r"\s+", " ")
        name = self.let(f"{field}_norm", name)
        reasons = [(~name.str.contains(r"\p{L}"), "no_letters")]
        return self.field(field, text, name, reasons, lower=lower, hashable=True)

    def city(self) -> _Field:
        text = self.text("city")
        lower = self.let("city_lower", text.str.to_lowercase())
        city = self.let("city_norm", _letters(lower))
        return self.field(
            "city", text, city, [(city.str.len_bytes() == 0, "no_letters")], lower=lower
        )

    def state(self) -> _Field:
        text = self.text("state")
        lower = self.let("state_lower", text.str.to_lowercase())
        key = self.let("state_key", _letters(lower))
        us_code = key.replace_strict(US_STATES, default=None, return_dtype=pl.String)
        us_postal = self.us_postal()
        state = pl.when(us_postal).then(us_code).otherwise(key)
        reasons = [
            (us_postal & us_code.is_null(), "unknown_state"),
            (key.str.len_bytes() == 0, "no_letters"),
        ]
        return self.field("state", text, state, reasons, lower=lower)

    def zip(self) -> _Field:
        text = self.text("zip")
        compact = self.let("zip_compact", text.str.replace_all(r"\s+", ""))
        us_zip = self.let("zip_us", compact.str.extract(r"^([0-9]{5})(?:-?[0-9]{4})?$", 1))
        if self.layout == "meta":
            other = compact.str.to_lowercase()
        else:
            other = text.str.replace_all(r"\s+", " ").str.to_uppercase()
        us_postal = self.us_postal()
        postal = pl.when(us_postal).then(us_zip).otherwise(other)
        return self.field("zip", text, postal, [(us_postal & us_zip.is_null(), "not_5_digits")])

    def birth_date(self) -> _Field:
        column = self.identity.birth_date
        if column is None:
            raise InternalError("birth_date built without a mapped column")
        dtype = self.schema.get(column)
        if dtype == pl.Date:
            date = pl.col(column)
        elif isinstance(dtype, pl.Datetime):
            date = pl.col(column).dt.date()
        else:
            text = pl.col(column).cast(pl.String).str.strip_chars()
            date = pl.coalesce(
                text.str.slice(0, 10).str.to_date("%Y-%m-%d", strict=False),
                text.str.to_date("%m/%d/%Y", strict=False),
                text.str.to_date("%Y%m%d", strict=False),
            )
        date = self.let("birth_date_date", date)
        text = self.let("birth_date_text", pl.col(column).cast(pl.String).str.strip_chars())
        earliest = dt.date(self.as_of.year - 125, 1, 1)
        reasons = [
            (date.is_null(), "unparseable"),
            (date > pl.lit(self.as_of), "future"),
            (date < pl.lit(earliest), "implausible"),
        ]
        return self.field("birth_date", text, date.dt.strftime("%Y-%m-%d"), reasons)

    def gender(self) -> _Field:
        text = self.text("gender")
        lower = self.let("gender_lower", text.str.to_lowercase())
        gender = _letters(lower).replace_strict(GENDERS, default=None, return_dtype=pl.String)
        gender = self.let("gender_norm", gender)
        return self.field(
            "gender", text, gender, [(gender.is_null(), "unknown_value")], lower=lower
        )

    def external_id(self) -> _Field:
        text = self.text("external_id")
        return self.field("external_id", text, text, [])

    # -- layouts -------------------------------------------------------------------------

    def mapped(self, name: str, build: Callable[[], _Field]) -> _Field:
        return self.absent(name) if getattr(self.identity, name) is None else build()

    def fields(self) -> dict[str, _Field]:
        """Layout column → field, in layout order."""
        email = self.mapped("email", self.email)
        phone = self.mapped("phone", self.phone)
        first = self.mapped("first_name", lambda: self.name("first_name"))
        last = self.mapped("last_name", lambda: self.name("last_name"))
        postal = self.mapped("zip", self.zip)
        country = self.country()
        if self.layout == "google_ads":
            return {
                "hashed_email": email,
                "hashed_phone_number": phone,
                "hashed_first_name": first,
                "hashed_last_name": last,
                "country_code": country,
                "postal_code": postal,
            }
        dob = self.mapped("birth_date", self.birth_date)

        def dob_part(offset: int, length: int, values: Iterable[int]) -> _Field:
            part = dob.value.str.slice(offset, length)
            texts = [f"{value:0{length}d}" for value in values]
            return _Field("birth_date", part, dob.outcome, dob.passthrough).with_digests(texts)

        years = range(self.as_of.year - 126, self.as_of.year + 2)

        return {
            "EXTERN_ID": self.mapped("external_id", self.external_id),
            "EMAIL": email,
            "PHONE": phone,
            "FN": first,
            "LN": last,
            "ZIP": postal,
            "CT": self.mapped("city", self.city),
            "ST": self.mapped("state", self.state),
            "COUNTRY": country,
            "DOBY": dob_part(0, 4, years),
            "DOBM": dob_part(5, 2, range(1, 13)),
            "DOBD": dob_part(8, 2, range(1, 32)),
            "GEN": self.mapped("gender", self.gender).with_digests(GENDERS.values()),
        }


def _check_layout(layout: str) -> Layout:
    if layout not in LAYOUTS:
        raise ConfigError(
            f"unknown hashed layout {layout!r}", f"use one of {', '.join(sorted(LAYOUTS))}"
        )
    return layout  # type: ignore[return-value]


def _check_columns(identity: IdentitySource, schema: pl.Schema) -> None:
    for name in IDENTITY_FIELDS:
        column = getattr(identity, name)
        if column is None:
            continue
        if column not in schema:
            raise DataError(
                f"[identity] maps {name} to column {column!r}, which the source does not have",
                f"map {name} to one of the source's columns or remove it from [identity]",
            )
        if schema[column].is_nested():
            raise DataError(
                f"[identity] maps {name} to column {column!r} of type {schema[column]}",
                f"map {name} to a text or date column",
            )
    reserved = [column for column in schema.names() if column.startswith(_TEMP)]
    if reserved:
        raise DataError(
            f"source columns {', '.join(reserved)} use the reserved prefix {_TEMP!r}",
            "rename them",
        )


def _staged(
    lf: pl.LazyFrame,
    identity: IdentitySource,
    layout: str,
    keep: Sequence[str],
    as_of: dt.date | None,
    *,
    sending: bool,
) -> tuple[pl.LazyFrame, dict[str, _Field]]:
    staged, [fields] = _staged_layouts(lf, identity, [layout], keep, as_of, sending=sending)
    return staged, fields


def _staged_layouts(
    lf: pl.LazyFrame,
    identity: IdentitySource,
    layouts: Sequence[str],
    keep: Sequence[str],
    as_of: dt.date | None,
    country_codes: Mapping[str, str] | None = None,
    *,
    sending: bool,
) -> tuple[pl.LazyFrame, list[dict[str, _Field]]]:
    """The frame with every intermediate the layouts need (computed once when layouts
    share it), and each layout's fields (``sending``: as uploaded, see ``_Builder``)."""
    checked = [_check_layout(layout) for layout in layouts]
    schema = lf.collect_schema()
    _check_columns(identity, schema)
    missing = [column for column in keep if column not in schema]
    if missing:
        raise DataError(
            f"columns to keep are not in the source: {', '.join(missing)}",
            "keep only columns the source has",
        )
    for layout in checked:
        clashes = [column for column in keep if column in LAYOUTS[layout]]
        if clashes:
            raise DataError(
                f"columns to keep clash with {layout} layout columns: {', '.join(clashes)}",
                "rename them before building the layout",
            )
    plan = _Plan(staged=True)
    fields = [
        _Builder(
            identity,
            layout,
            schema=schema,
            as_of=as_of,
            staged=True,
            plan=plan,
            country_codes=country_codes,
            sending=sending,
        ).fields()
        for layout in checked
    ]
    return plan.apply(lf), fields


# ---------------------------------------------------------------------------------------
# Public API


def normalized_exprs(
    identity: IdentitySource,
    layout: Layout,
    *,
    schema: Mapping[str, pl.DataType] | None = None,
    as_of: dt.date | None = None,
) -> dict[str, pl.Expr]:
    """Layout column → normalized (pre-hash) value as one expression, null where empty or
    invalid; already-hashed inputs come out as their lowercase hex.

    ``schema`` (the source's) lets a Date/Datetime birth-date column skip string
    parsing; ``as_of`` (default today UTC) is the day after which a birth date counts as
    ``future``. For whole frames :func:`normalized_layout` is faster: it computes each
    intermediate once.
    """
    builder = _Builder(identity, layout, schema=schema, as_of=as_of, staged=False)
    return {column: field.value.alias(column) for column, field in builder.fields().items()}


# Identity fields whose canonical value segment conditions and DP breakdowns compare,
# and whether that value is shown in capitals (ISO and USPS codes, F/M).
CANONICAL_FIELDS: dict[str, bool] = {
    "gender": True,
    "state": True,
    "country": True,
    "zip": False,
    "first_name": False,
    "last_name": False,
    "city": False,
    "email": False,
    "phone": False,
}


def canonical_expr(
    identity: IdentitySource, field: str, *, schema: Mapping[str, pl.DataType] | None = None
) -> pl.Expr:
    """The value of identity ``field`` as the upload layer normalizes it (Meta's rules:
    ``Female`` → ``F``, ``New York`` / ``ny`` → ``NY``, ``United States`` → ``US``,
    ``10001-1234`` → ``10001``, names lowercase letters, phones digits with the calling
    code); null where empty or invalid. One meaning per value: segment conditions and
    DP breakdowns compare this, not the raw text."""
    if field not in CANONICAL_FIELDS:
        raise InternalError(f"no canonical form for identity field {field!r}")
    if getattr(identity, field) is None:
        raise InternalError(f"canonical_expr({field!r}) without a mapped column")
    builder = _Builder(identity, "meta", schema=schema, as_of=None, staged=False)
    if field in ("first_name", "last_name"):
        built = builder.name(field)
    else:
        built = getattr(builder, field)()
    value = built.value.str.to_uppercase() if CANONICAL_FIELDS[field] else built.value
    return value.alias(str(getattr(identity, field)))


def canonical_values(
    identity: IdentitySource, field: str, values: Sequence[str]
) -> list[str | None]:
    """:func:`canonical_expr` applied to literal values (a segment's ``in: [NY, NJ]``):
    what those values mean, read with ``default_country`` as their country."""
    column = "__audiences_literal"
    mapping: dict[str, str | None] = {name: None for name in IDENTITY_FIELDS}
    mapping[field] = column
    literal = IdentityMapping.model_validate(
        {**mapping, "default_country": identity.default_country}
    )
    frame = pl.DataFrame({column: pl.Series(list(values), dtype=pl.String)})
    return frame.select(canonical_expr(literal, field)).to_series().to_list()


def normalized_layout(
    lf: pl.LazyFrame,
    identity: IdentitySource,
    layout: Layout,
    *,
    keep: Sequence[str] = (),
    as_of: dt.date | None = None,
) -> pl.LazyFrame:
    """The ``keep`` columns, then the layout's columns holding normalized values (not
    hashed); null where empty or invalid. For linking records: an e-mail at a reserved
    domain (:data:`RESERVED_EMAIL_DOMAINS`) is kept here, never uploaded."""
    staged, fields = _staged(lf, identity, layout, keep, as_of, sending=False)
    values = [field.value.alias(column) for column, field in fields.items()]
    return staged.select(*(pl.col(column) for column in keep), *values)


def hashed_layout(
    lf: pl.LazyFrame,
    identity: IdentitySource,
    layout: Layout,
    *,
    keep: Sequence[str] = (),
    as_of: dt.date | None = None,
) -> pl.LazyFrame:
    """The ``keep`` columns (unchanged), then exactly the layout's columns.

    Hashed columns hold SHA-256 lowercase hex of the normalized value (already-hashed
    inputs pass through lowercased); plain columns (``EXTERN_ID``, ``country_code``,
    ``postal_code``) hold the normalized value; empty or invalid values are null, and so
    is an e-mail at a reserved domain (:data:`RESERVED_EMAIL_DOMAINS`).
    """
    staged, fields = _staged(lf, identity, layout, keep, as_of, sending=True)
    return staged.select(*(pl.col(column) for column in keep), *_hashed_exprs(fields))


def _hashed_exprs(fields: Mapping[str, _Field]) -> list[pl.Expr]:
    """The layout columns as :func:`hashed_layout` documents them."""
    exprs = []
    for column, field in fields.items():
        if column in PLAIN_COLUMNS:
            exprs.append(field.value.alias(column))
        elif field.digests is not None:
            digest = field.value.replace_strict(field.digests, default=None, return_dtype=pl.String)
            exprs.append(digest.alias(column))
        elif field.digest is not None:
            exprs.append(field.digest.alias(column))
        else:
            digest = pl.when(field.passthrough).then(field.value).otherwise(sha256_hex(field.value))
            exprs.append(digest.alias(column))
    return exprs


# Identity fields whose values repeat across people (names, places, birth dates): on a
# materialized frame their layout columns are computed once per distinct value and joined
# back — several times cheaper than normalizing every row for a large release.
_REPEATING = (
    "first_name",
    "last_name",
    "zip",
    "city",
    "state",
    "birth_date",
    "gender",
    "country",
)
_BY_COUNTRY = ("zip", "state")  # their rules depend on the row's country


def hashed_layout_frame(
    frame: pl.DataFrame,
    identity: IdentitySource,
    layout: Layout,
    *,
    keep: Sequence[str] = (),
    as_of: dt.date | None = None,
    min_rows: int = 10_000,
) -> pl.DataFrame:
    """Exactly ``hashed_layout(frame.lazy(), ...).collect()``, computed faster: see
    :func:`hashed_layouts_frame`."""
    frames = hashed_layouts_frame(
        frame, identity, [layout], keep=keep, as_of=as_of, min_rows=min_rows
    )
    return frames[layout]


def hashed_layouts_frame(
    frame: pl.DataFrame,
    identity: IdentitySource,
    layouts: Sequence[Layout],
    *,
    keep: Sequence[str] = (),
    as_of: dt.date | None = None,
    min_rows: int = 10_000,
) -> dict[str, pl.DataFrame]:
    """Per layout, exactly ``hashed_layout(frame.lazy(), ..., layout).collect()``, computed
    faster: the layouts share the per-row work they have in common (an email's trimmed
    lowercase form, a phone's digits and calling code), and the repeating fields are
    computed once per distinct (value, country) — below ``min_rows`` rows the joins cost
    more than they save."""
    layouts = [_check_layout(layout) for layout in layouts]
    mapping = IdentityMapping(
        **{name: getattr(identity, name) for name in IDENTITY_FIELDS},
        default_country=identity.default_country,
    )
    repeating = [name for name in _REPEATING if getattr(mapping, name) is not None]
    if frame.height < min_rows:
        repeating = []
    # the per-row fields still need each row's country rules (a phone's calling code):
    # the country column stays mapped for them, its code looked up per distinct value
    per_row = mapping.model_copy(update={name: None for name in repeating if name != "country"})
    codes = _country_codes(frame, mapping, as_of) if "country" in repeating else None
    staged, per_layout = _staged_layouts(
        frame.lazy(), per_row, layouts, keep, as_of, codes, sending=True
    )
    joined = _per_distinct_plan(frame, mapping, layouts, repeating, as_of)
    names = [] if joined is None else joined.collect_schema().names()
    # the layout columns computed per distinct value, by layout
    by_distinct = [
        {
            name.removeprefix(_distinct_prefix(i))
            for name in names
            if name.startswith(_distinct_prefix(i))
        }
        for i in range(len(layouts))
    ]
    # each layout's per-row columns under temporary names (the layouts share some names)
    rows = [f"__hl_row_{i}_" for i in range(len(layouts))]
    plans = [
        staged.select(
            *(pl.col(column) for column in keep),
            *(
                expr.alias(prefix + column)
                for prefix, fields, distinct in zip(rows, per_layout, by_distinct, strict=True)
                for column, expr in zip(fields, _hashed_exprs(fields), strict=True)
                if column not in distinct
            ),
        )
    ]
    main, *parts = pl.collect_all(plans + ([] if joined is None else [joined]))
    both = main if joined is None else pl.concat([main, *parts], how="horizontal")
    out: dict[str, pl.DataFrame] = {}
    for i, (layout, prefix, distinct) in enumerate(zip(layouts, rows, by_distinct, strict=True)):
        out[layout] = both.select(
            *keep,
            *(
                pl.col((_distinct_prefix(i) if c in distinct else prefix) + c).alias(c)
                for c in LAYOUTS[layout]
            ),
        )
    return out


def _distinct_prefix(index: int) -> str:
    """The temporary name prefix of layout ``index``'s per-distinct columns."""
    return f"__hl_distinct_{index}_"


def _country_codes(
    frame: pl.DataFrame, mapping: IdentityMapping, as_of: dt.date | None
) -> dict[str, str]:
    """Each distinct raw value of the country column → its ISO code, by the per-row
    expressions themselves (values without a code are left out: they look up null)."""
    assert mapping.country is not None
    key = "__hl_key_0"
    only = IdentityMapping(country=key, default_country=mapping.default_country)
    builder = _Builder(only, "meta", schema=None, as_of=as_of, staged=False)
    table = (
        frame.select(pl.col(mapping.country).cast(pl.String).alias(key))
        .unique()
        .select(key, builder.country_rules()[0].alias("code"))
        .drop_nulls()
    )
    return dict(
        zip(table.get_column(key).to_list(), table.get_column("code").to_list(), strict=True)
    )


def _per_distinct_plan(
    frame: pl.DataFrame,
    mapping: IdentityMapping,
    layouts: Sequence[Layout],
    repeating: Sequence[str],
    as_of: dt.date | None,
) -> pl.LazyFrame | None:
    """The layouts' columns of the repeating fields per row of ``frame`` (layout ``i``'s
    column ``c`` named ``_distinct_prefix(i) + c``), each field's distinct (value, country)
    computed once, every layout's columns built on it together, and joined back in row
    order once; None without any repeating field."""
    if not repeating:
        return None
    owners = [
        {
            column: field.identity_field
            for column, field in _Builder(
                mapping, layout, schema=frame.schema, as_of=as_of, staged=True
            )
            .fields()
            .items()
        }
        for layout in layouts
    ]
    parts = []
    for name in repeating:
        columns = [getattr(mapping, name)]
        if name in _BY_COUNTRY and mapping.country is not None and mapping.country != columns[0]:
            columns.append(mapping.country)
        # the distinct values under temporary names (a CRM column may be called "ZIP")
        keys = [f"__hl_key_{i}" for i in range(len(columns))]
        country = None
        if name in _BY_COUNTRY and mapping.country is not None:
            country = keys[columns.index(mapping.country)]
        only = IdentityMapping(
            **{"country": country, name: keys[0]}, default_country=mapping.default_country
        )
        distinct = (
            frame.lazy()
            .select([pl.col(c).alias(k) for c, k in zip(columns, keys, strict=True)])
            .unique()
        )
        staged, per_layout = _staged_layouts(distinct, only, layouts, keys, as_of, sending=True)
        outputs = [
            expr.alias(_distinct_prefix(i) + column)
            for i, (owner, fields) in enumerate(zip(owners, per_layout, strict=True))
            for column, expr in zip(fields, _hashed_exprs(fields), strict=True)
            if owner[column] == name
        ]
        parts.append(
            frame.lazy()
            .select(columns)
            .join(
                staged.select(*keys, *outputs),
                left_on=columns,
                right_on=keys,
                how="left",
                nulls_equal=True,
                maintain_order="left",
            )
            .select(output.meta.output_name() for output in outputs)
        )
    return pl.concat(parts, how="horizontal")


def identifier_quality(
    lf: pl.LazyFrame,
    identity: IdentitySource,
    layout: Layout,
    *,
    as_of: dt.date | None = None,
) -> pl.LazyFrame:
    """Counts per identifier and outcome — never values.

    Columns: ``field`` (identity field name, e.g. ``email``), ``status`` (``valid``,
    ``already_hashed``, ``empty``, ``defaulted``, ``invalid``), ``reason`` (the invalid
    reason, else null) and ``rows``. Lists the identifiers the layout uses and the
    mapping provides, plus ``country`` (``default_country`` always provides one); an
    outcome with no rows has no line.
    """
    outcomes = identifier_outcomes(lf, identity, [layout], as_of=as_of)
    is_status = pl.col("outcome").is_in(OUTCOME_STATUSES)
    return (
        outcomes.rename(lambda column: column.removeprefix(f"{layout}:"))
        .unpivot(variable_name="field", value_name="outcome")
        .group_by("field", "outcome")
        .agg(pl.len().alias("rows"))
        .select(
            "field",
            pl.when(is_status).then(pl.col("outcome")).otherwise(pl.lit("invalid")).alias("status"),
            pl.when(is_status).then(pl.lit(None)).otherwise(pl.col("outcome")).alias("reason"),
            "rows",
        )
        .sort("field", "status", "reason", nulls_last=False)
    )


def identifier_outcomes(
    lf: pl.LazyFrame,
    identity: IdentitySource,
    layouts: Sequence[Layout],
    *,
    as_of: dt.date | None = None,
) -> pl.LazyFrame:
    """Per record, the outcome of each identifier of each layout (what
    :func:`identifier_quality` counts), the layouts' shared steps computed once: one
    column per layout and identifier, named ``"{layout}:{field}"``, holding ``valid``,
    ``already_hashed``, ``empty``, ``defaulted`` or the invalid reason. To be counted in
    batches (``audiences columns --identifiers``): the plan does not stream, so over a
    whole export at once it holds the export's normalization (9.1 GB for 10M contacts)."""
    staged, per_layout = _staged_layouts(lf, identity, layouts, (), as_of, sending=True)
    outcomes: dict[str, pl.Expr] = {}
    for layout, fields in zip(layouts, per_layout, strict=True):
        for field in fields.values():
            name = field.identity_field
            if name == "country" or getattr(identity, name) is not None:
                alias = f"{layout}:{name}"
                outcomes.setdefault(alias, field.outcome.alias(alias))
    return staged.select(*outcomes.values())


def member_key(expr_or_col: str | pl.Expr, salt: bytes) -> pl.Expr:
    """Salted key of a person: first 8 bytes of SHA-256(salt || UTF-8 external id), UInt64.

    Named ``member_key``. The external id is trimmed first (as in the layouts); empty
    ids give null. The key identifies a person in state without being an identifier a
    platform could match.
    """
    if not isinstance(salt, bytes) or len(salt) < 16:
        raise InternalError("member_key needs a salt of at least 16 bytes")
    expr = pl.col(expr_or_col) if isinstance(expr_or_col, str) else expr_or_col
    text = expr.cast(pl.String).str.strip_chars()
    ident = pl.when(text.str.len_bytes() > 0).then(text)
    salted = pl.lit(salt, dtype=pl.Binary) + ident.cast(pl.Binary)
    key = sha256_hex(salted).str.slice(0, 16).str.to_integer(base=16, dtype=pl.UInt64)
    return key.alias("member_key")
