"""Identifier normalization and SHA-256 hashing per ad-platform layout.

Everything here builds polars expressions: no Python runs per row. The rules follow
the platforms' documentation (see ``PLATFORMS.md``), not the SDKs' helpers, which are
known to be wrong (the Meta SDK drops accented letters, turns ``United States`` into
``un``, keeps spaces in ZIPs and hashes empty cells; the google-ads example helper does
not lowercase).

Per identifier a row is in exactly one *outcome*: ``empty`` (null, blank, or a
placeholder like ``N/A``), ``already_hashed`` (64 hex characters in an email, phone or
name column: passed through lowercased, never hashed twice), ``valid``, ``defaulted``
(country only: a blank country takes ``default_country``), or an invalid reason such as
``no_at_sign``. Empty and invalid values come out as null: nothing empty is ever hashed
and nothing invalid is ever uploaded. :func:`identifier_quality` counts the outcomes;
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
* Unicode text is NFC-normalized, so ``José`` hashes the same whether the CRM stored
  ``é`` or ``e`` + combining accent.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import polars as pl
import polars_hash as plh
from pydantic import BaseModel, ConfigDict, field_validator

from audiences.errors import ConfigError, DataError, InternalError

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

_ISO_ALPHA2 = """
    ad ae af ag ai al am ao aq ar as at au aw ax az ba bb bd be bf bg bh bi bj bl bm bn bo
    bq br bs bt bv bw by bz ca cc cd cf cg ch ci ck cl cm cn co cr cu cv cw cx cy cz de dj
    dk dm do dz ec ee eg eh er es et fi fj fk fm fo fr ga gb gd ge gf gg gh gi gl gm gn gp
    gq gr gs gt gu gw gy hk hm hn hr ht hu id ie il im in io iq ir is it je jm jo jp ke kg
    kh ki km kn kp kr kw ky kz la lb lc li lk lr ls lt lu lv ly ma mc md me mf mg mh mk ml
    mm mn mo mp mq mr ms mt mu mv mw mx my mz na nc ne nf ng ni nl no np nr nu nz om pa pe
    pf pg ph pk pl pm pn pr ps pt pw py qa re ro rs ru rw sa sb sc sd se sg sh si sj sk sl
    sm sn so sr ss st sv sx sy sz tc td tf tg th tj tk tl tm tn to tr tt tv tw tz ua ug um
    us uy uz va vc ve vg vi vn vu wf ws ye yt za zm zw
"""
ISO_COUNTRIES = frozenset(_ISO_ALPHA2.split())

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

COUNTRY_CODES: dict[str, str] = {code: code for code in ISO_COUNTRIES}
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

_SHA256_HEX = r"^[0-9a-fA-F]{64}$"
# Values that mean "nothing here" (after trim + lowercase).
_PLACEHOLDER = r"^(?:n/?a|n\.a\.?|none|null|nil|unknown|-+|\.+|\?+)$"
_DOMAIN = r"@(?:[\p{L}\p{N}](?:[\p{L}\p{N}-]*[\p{L}\p{N}])?\.)+(?:\p{L}{2,63}|xn--[a-z0-9-]+)$"
_PHONE_EXTENSION = r"(?i)\s*(?:ext\.?|extension|x|#)\s*[0-9]{1,6}$"
_NON_LETTER = r"[^\p{L}\p{M}]"


# ---------------------------------------------------------------------------------------
# Identity mapping


class IdentitySource(Protocol):
    """What the layout functions read from an identity mapping (duck-typed)."""

    external_id: str | None
    email: str | None
    phone: str | None
    first_name: str | None
    last_name: str | None
    zip: str | None
    city: str | None
    state: str | None
    country: str | None
    birth_date: str | None
    gender: str | None
    default_country: str


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


# ---------------------------------------------------------------------------------------
# Building blocks


def sha256_hex(expr: pl.Expr) -> pl.Expr:
    """SHA-256 of the UTF-8 bytes of a string expression, lowercase hex; null stays null."""
    return plh.CryptographicHashingNameSpace(expr).sha2_256()


def _text(column: str) -> pl.Expr:
    return pl.col(column).cast(pl.String).str.strip_chars()


def _is_blank(text: pl.Expr) -> pl.Expr:
    return (
        text.is_null()
        | (text.str.len_bytes() == 0)
        | text.str.to_lowercase().str.contains(_PLACEHOLDER)
    )


def _letters(text: pl.Expr) -> pl.Expr:
    """Lowercase, NFC, letters (and combining marks) only."""
    return text.str.to_lowercase().str.normalize("NFC").str.replace_all(_NON_LETTER, "")


def _nfc_lower(text: pl.Expr) -> pl.Expr:
    return text.str.to_lowercase().str.normalize("NFC")


@dataclass(frozen=True)
class _Field:
    """One identifier of one layout, as expressions.

    ``outcome`` is ``empty`` / ``already_hashed`` / ``valid`` / ``defaulted`` or an
    invalid reason; ``value`` is the normalized value (null unless valid, defaulted or
    already hashed).
    """

    identity_field: str
    outcome: pl.Expr
    value: pl.Expr
    passthrough: pl.Expr  # true where the value is an already-hashed pass-through


def _field(
    identity_field: str,
    text: pl.Expr,
    normalized: pl.Expr,
    reasons: Sequence[tuple[pl.Expr, str]],
    *,
    hashable: bool = False,
    blank_value: pl.Expr | None = None,
) -> _Field:
    blank = _is_blank(text)
    passthrough = text.str.contains(_SHA256_HEX) if hashable else pl.lit(False)
    outcome = pl.when(blank).then(pl.lit("defaulted" if blank_value is not None else "empty"))
    outcome = outcome.when(passthrough).then(pl.lit("already_hashed"))
    for condition, reason in reasons:
        outcome = outcome.when(condition).then(pl.lit(reason))
    outcome_expr = outcome.otherwise(pl.lit("valid"))
    value = pl.when(blank).then(blank_value if blank_value is not None else pl.lit(None))
    value = value.when(passthrough).then(text.str.to_lowercase())
    value_expr = (
        value.when(outcome_expr == "valid").then(normalized).otherwise(None).cast(pl.String)
    )
    return _Field(identity_field, outcome_expr, value_expr, passthrough)


def _absent(identity_field: str, blank_value: pl.Expr | None = None) -> _Field:
    """An identifier the mapping does not provide."""
    if blank_value is None:
        return _Field(identity_field, pl.lit("empty"), pl.lit(None, pl.String), pl.lit(False))
    return _Field(identity_field, pl.lit("defaulted"), blank_value, pl.lit(False))


def _email(column: str, layout: Layout) -> _Field:
    text = _text(column)
    email = _nfc_lower(text)
    if layout == "google_ads":
        local = email.str.extract(r"^(.*)@[^@]*$", 1)
        domain = email.str.extract(r"@([^@]*)$", 1)
        gmail_local = local.str.replace(r"\+.*$", "").str.replace_all(".", "", literal=True)
        email = (
            pl.when(domain.is_in(GMAIL_DOMAINS))
            .then(pl.concat_str([gmail_local, pl.lit("@"), domain]))
            .otherwise(email)
        )
    reasons = [
        (~email.str.contains("@", literal=True), "no_at_sign"),
        (email.str.count_matches("@", literal=True) > 1, "multiple_at_signs"),
        (~email.str.contains(r"^[^@\s]+@"), "bad_local_part"),
        (~email.str.contains(_DOMAIN), "bad_domain"),
    ]
    return _field("email", text, email, reasons, hashable=True)


def _phone_digits(text: pl.Expr, calling_code: pl.Expr) -> tuple[pl.Expr, list]:
    """Country code + national number as digits, and the invalid reasons."""
    number = text.str.replace(_PHONE_EXTENSION, "")
    plus = number.str.starts_with("+")
    digits = number.str.replace_all(r"[^0-9]", "")
    nanp = calling_code == "1"
    prefix_00 = ~plus & digits.str.starts_with("00")
    prefix_011 = ~plus & nanp & digits.str.starts_with("011")
    international = plus | prefix_00 | prefix_011
    national = (
        pl.when(nanp & (digits.str.len_bytes() == 11) & digits.str.starts_with("1"))
        .then(digits)
        .when(nanp | calling_code.is_in(_KEEPS_LEADING_ZERO))
        .then(pl.concat_str([calling_code, digits]))
        .otherwise(pl.concat_str([calling_code, digits.str.strip_chars_start("0")]))
    )
    full = (
        pl.when(plus)
        .then(digits)
        .when(prefix_00)
        .then(digits.str.slice(2))
        .when(prefix_011)
        .then(digits.str.slice(3))
        .otherwise(national)
    )
    length = full.str.len_bytes()
    reasons = [
        (digits.str.len_bytes() == 0, "no_digits"),
        (~international & calling_code.is_null(), "unknown_calling_code"),
        (full.str.starts_with("0"), "bad_country_code"),
        (full.str.starts_with("1") & (length < 11), "too_short"),
        (full.str.starts_with("1") & (length > 11), "too_long"),
        (full.str.starts_with("1") & ~full.str.contains(r"^1[2-9]"), "bad_area_code"),
        (length < 7, "too_short"),
        (length > 15, "too_long"),
    ]
    return full, reasons


def _phone(column: str, layout: Layout, calling_code: pl.Expr) -> _Field:
    text = _text(column)
    digits, reasons = _phone_digits(text, calling_code)
    value = pl.concat_str([pl.lit("+"), digits]) if layout == "google_ads" else digits
    return _field("phone", text, value, reasons, hashable=True)


def _name(identity_field: str, column: str, layout: Layout) -> _Field:
    text = _text(column)
    if layout == "meta":
        name = _letters(text)
    else:
        name = _nfc_lower(text).str.replace_all(r"\s+", " ").str.strip_chars()
    reasons = [(~name.str.contains(r"\p{L}"), "no_letters")]
    return _field(identity_field, text, name, reasons, hashable=True)


def _city(column: str) -> _Field:
    text = _text(column)
    city = _letters(text)
    return _field("city", text, city, [(city.str.len_bytes() == 0, "no_letters")])


def _state(column: str, us_postal: pl.Expr) -> _Field:
    text = _text(column)
    key = _letters(text)
    us_code = key.replace_strict(US_STATES, default=None, return_dtype=pl.String)
    state = pl.when(us_postal).then(us_code).otherwise(key)
    reasons = [
        (us_postal & us_code.is_null(), "unknown_state"),
        (key.str.len_bytes() == 0, "no_letters"),
    ]
    return _field("state", text, state, reasons)


def _zip(column: str, layout: Layout, us_postal: pl.Expr) -> _Field:
    text = _text(column)
    compact = text.str.replace_all(r"\s+", "")
    us_zip = compact.str.extract(r"^([0-9]{5})(?:-?[0-9]{4})?$", 1)
    if layout == "meta":
        other = compact.str.to_lowercase()
    else:
        other = text.str.replace_all(r"\s+", " ").str.to_uppercase()
    postal = pl.when(us_postal).then(us_zip).otherwise(other)
    return _field("zip", text, postal, [(us_postal & us_zip.is_null(), "not_5_digits")])


def _country_code(column: str) -> tuple[pl.Expr, pl.Expr]:
    """(trimmed text, ISO-2 lowercase code or null)."""
    text = _text(column)
    code = _letters(text).replace_strict(COUNTRY_CODES, default=None, return_dtype=pl.String)
    return text, code


def _country(column: str | None, default: str, layout: Layout) -> _Field:
    fallback = pl.lit(default.lower())
    if column is None:
        field = _absent("country", fallback)
    else:
        text, code = _country_code(column)
        field = _field(
            "country", text, code, [(code.is_null(), "unknown_country")], blank_value=fallback
        )
    if layout == "google_ads":
        return _Field(
            field.identity_field, field.outcome, field.value.str.to_uppercase(), field.passthrough
        )
    return field


def _birth_date(column: str, dtype: pl.DataType | None, as_of: dt.date) -> tuple[_Field, pl.Expr]:
    if dtype == pl.Date:
        date = pl.col(column)
        text = date.cast(pl.String)
    elif isinstance(dtype, pl.Datetime):
        date = pl.col(column).dt.date()
        text = date.cast(pl.String)
    else:
        text = _text(column)
        date = pl.coalesce(
            text.str.slice(0, 10).str.to_date("%Y-%m-%d", strict=False),
            text.str.to_date("%m/%d/%Y", strict=False),
            text.str.to_date("%Y%m%d", strict=False),
        )
    earliest = dt.date(as_of.year - 125, 1, 1)
    reasons = [
        (date.is_null(), "unparseable"),
        (date > pl.lit(as_of), "future"),
        (date < pl.lit(earliest), "implausible"),
    ]
    field = _field("birth_date", text, date.dt.strftime("%Y-%m-%d"), reasons)
    return field, field.value.str.to_date("%Y-%m-%d")


def _gender(column: str) -> _Field:
    text = _text(column)
    gender = _letters(text).replace_strict(GENDERS, default=None, return_dtype=pl.String)
    return _field("gender", text, gender, [(gender.is_null(), "unknown_value")])


def _external_id(column: str) -> _Field:
    text = _text(column)
    return _field("external_id", text, text, [])


def _check_layout(layout: str) -> Layout:
    if layout not in LAYOUTS:
        raise ConfigError(
            f"unknown hashed layout {layout!r}", f"use one of {', '.join(sorted(LAYOUTS))}"
        )
    return layout  # type: ignore[return-value]


def _fields(
    identity: IdentitySource,
    layout: Layout,
    schema: Mapping[str, pl.DataType] | None,
    as_of: dt.date | None,
) -> dict[str, _Field]:
    """Layout column → field expressions."""
    layout = _check_layout(layout)
    as_of = as_of or dt.datetime.now(dt.UTC).date()
    default = identity.default_country.strip().lower()
    if default not in ISO_COUNTRIES:
        raise ConfigError(
            f"default_country {identity.default_country!r} is not an ISO 3166-1 alpha-2 code",
            "set [identity] default_country to a two-letter code such as US",
        )
    if identity.country is None:
        rule_country = pl.lit(default)
    else:
        rule_country = pl.coalesce(_country_code(identity.country)[1], pl.lit(default))
    us_postal = rule_country.is_in(US_POSTAL_COUNTRIES)
    calling_code = rule_country.replace_strict(CALLING_CODES, default=None, return_dtype=pl.String)

    def mapped(name: str, build) -> _Field:  # type: ignore[no-untyped-def]
        column = getattr(identity, name)
        return _absent(name) if column is None else build(column)

    email = mapped("email", lambda c: _email(c, layout))
    phone = mapped("phone", lambda c: _phone(c, layout, calling_code))
    first = mapped("first_name", lambda c: _name("first_name", c, layout))
    last = mapped("last_name", lambda c: _name("last_name", c, layout))
    postal = mapped("zip", lambda c: _zip(c, layout, us_postal))
    country = _country(identity.country, default, layout)
    if layout == "google_ads":
        return {
            "hashed_email": email,
            "hashed_phone_number": phone,
            "hashed_first_name": first,
            "hashed_last_name": last,
            "country_code": country,
            "postal_code": postal,
        }
    if identity.birth_date is None:
        dob = _absent("birth_date")
        date = pl.lit(None, pl.Date)
    else:
        dtype = schema.get(identity.birth_date) if schema is not None else None
        dob, date = _birth_date(identity.birth_date, dtype, as_of)

    def dob_part(fmt: str) -> _Field:
        return _Field("birth_date", dob.outcome, date.dt.strftime(fmt), dob.passthrough)

    return {
        "EXTERN_ID": mapped("external_id", _external_id),
        "EMAIL": email,
        "PHONE": phone,
        "FN": first,
        "LN": last,
        "ZIP": postal,
        "CT": mapped("city", _city),
        "ST": mapped("state", lambda c: _state(c, us_postal)),
        "COUNTRY": country,
        "DOBY": dob_part("%Y"),
        "DOBM": dob_part("%m"),
        "DOBD": dob_part("%d"),
        "GEN": mapped("gender", _gender),
    }


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


# ---------------------------------------------------------------------------------------
# Public API


def normalized_exprs(
    identity: IdentitySource,
    layout: Layout,
    *,
    schema: Mapping[str, pl.DataType] | None = None,
    as_of: dt.date | None = None,
) -> dict[str, pl.Expr]:
    """Layout column → normalized (pre-hash) value, null where empty or invalid.

    Already-hashed inputs come out as their lowercase hex. ``schema`` (the source's)
    lets a Date/Datetime birth-date column skip string parsing; ``as_of`` (default today
    UTC) is the day after which a birth date counts as ``future``.
    """
    fields = _fields(identity, layout, schema, as_of)
    return {column: field.value.alias(column) for column, field in fields.items()}


def hashed_layout(
    lf: pl.LazyFrame,
    identity: IdentitySource,
    layout: Layout,
    *,
    keep: Sequence[str] = (),
    as_of: dt.date | None = None,
) -> pl.LazyFrame:
    """The rows of ``lf`` as the layout's columns (after the ``keep`` columns, unchanged).

    Hashed columns are SHA-256 lowercase hex of the normalized value; plain columns are
    the normalized value; empty or invalid values are null.
    """
    layout = _check_layout(layout)
    schema = lf.collect_schema()
    _check_columns(identity, schema)
    missing = [column for column in keep if column not in schema]
    if missing:
        raise DataError(
            f"columns to keep are not in the source: {', '.join(missing)}",
            "keep only columns the source has",
        )
    clashes = [column for column in keep if column in LAYOUTS[layout]]
    if clashes:
        raise DataError(
            f"columns to keep clash with {layout} layout columns: {', '.join(clashes)}",
            "rename them before building the layout",
        )
    fields = _fields(identity, layout, schema, as_of)
    exprs = []
    for column, field in fields.items():
        if column in PLAIN_COLUMNS:
            exprs.append(field.value.alias(column))
        else:
            hashed = pl.when(field.passthrough).then(field.value).otherwise(sha256_hex(field.value))
            exprs.append(hashed.alias(column))
    return lf.select(*(pl.col(column) for column in keep), *exprs)


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
    reason, else null) and ``rows``. Only identifiers the layout uses and the mapping
    provides (plus ``country``, which ``default_country`` always provides) are listed;
    an outcome with no rows has no line.
    """
    layout = _check_layout(layout)
    schema = lf.collect_schema()
    _check_columns(identity, schema)
    fields = _fields(identity, layout, schema, as_of)
    outcomes: dict[str, pl.Expr] = {}
    for field in fields.values():
        name = field.identity_field
        if name != "country" and getattr(identity, name) is None:
            continue
        outcomes.setdefault(name, field.outcome.alias(name))
    if not outcomes:
        return pl.LazyFrame(
            schema={"field": pl.String, "status": pl.String, "reason": pl.String, "rows": pl.UInt32}
        )
    is_status = pl.col("outcome").is_in(OUTCOME_STATUSES)
    return (
        lf.select(*outcomes.values())
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


def member_key(expr_or_col: str | pl.Expr, salt: bytes) -> pl.Expr:
    """Salted key of a person: first 8 bytes of SHA-256(salt || UTF-8 external id), UInt64.

    Named ``member_key``. The external id is trimmed first (as in the layouts); empty ids give null. The key
    identifies a person in state without being an identifier a platform could match.
    """
    if not isinstance(salt, bytes) or len(salt) < 16:
        raise InternalError("member_key needs a salt of at least 16 bytes")
    expr = pl.col(expr_or_col) if isinstance(expr_or_col, str) else expr_or_col
    text = expr.cast(pl.String).str.strip_chars()
    ident = pl.when(text.str.len_bytes() > 0).then(text)
    salted = pl.lit(salt, dtype=pl.Binary) + ident.cast(pl.Binary)
    digest = plh.CryptographicHashingNameSpace(salted).sha2_256()
    key = digest.str.slice(0, 16).str.to_integer(base=16, dtype=pl.UInt64)
    return key.alias("member_key")
