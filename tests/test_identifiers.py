"""Identifier normalization and hashing.

Expected values are normalized BY HAND from the platforms' documentation and hashed
with hashlib here; the SDKs' helpers are never the oracle (they are known to be wrong,
see test_differs_from_sdk_helpers).
"""

from __future__ import annotations

import datetime as dt
import hashlib

import polars as pl
import polars_hash as plh
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audiences.core.errors import ConfigError, DataError, InternalError
from audiences.crm.identifiers import (
    LAYOUTS,
    RESERVED_EMAIL_DOMAINS,
    IdentityMapping,
    calling_code_known,
    hashed_layout,
    hashed_layout_frame,
    hashed_layouts_frame,
    identifier_quality,
    member_key,
    normalized_exprs,
    normalized_layout,
    plainly_valid_email,
    plainly_valid_phone,
    reserved_email,
)

AS_OF = dt.date(2025, 6, 1)
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


FULL = IdentityMapping(
    external_id="contact_id",
    email="email",
    phone="phone",
    first_name="first_name",
    last_name="last_name",
    zip="zip",
    city="city",
    state="state",
    country="country",
    birth_date="birth_date",
    gender="sex",
)

COLUMNS: tuple[str, ...] = ("contact_id", "email", "phone", "first_name", "last_name", "zip")
COLUMNS += ("city", "state", "country", "sex", "birth_date")


def contacts(**columns: list) -> pl.LazyFrame:
    """A contacts frame with just the given columns (text, birth_date as Date)."""
    return pl.LazyFrame(
        {
            name: pl.Series(name, values, dtype=pl.Date if name == "birth_date" else pl.String)
            for name, values in columns.items()
        }
    )


def mapped(lf: pl.LazyFrame, identity: IdentityMapping | None) -> IdentityMapping:
    """``identity``, or FULL restricted to the columns ``lf`` has."""
    if identity is not None:
        return identity
    present = set(lf.collect_schema().names())
    unmapped = {f: None for f in IdentityMapping.model_fields if getattr(FULL, f) not in present}
    unmapped.pop("default_country", None)
    return FULL.model_copy(update=unmapped)


def normalized(
    lf: pl.LazyFrame, layout: str, identity: IdentityMapping | None = None
) -> pl.DataFrame:
    exprs = normalized_exprs(mapped(lf, identity), layout, schema=lf.collect_schema(), as_of=AS_OF)  # type: ignore[arg-type]
    return lf.select(**exprs).collect()


def hashed(lf: pl.LazyFrame, layout: str, identity: IdentityMapping | None = None) -> pl.DataFrame:
    return hashed_layout(lf, mapped(lf, identity), layout, as_of=AS_OF).collect()  # type: ignore[arg-type]


def quality(lf: pl.LazyFrame, layout: str, identity: IdentityMapping | None = None) -> dict:
    frame = identifier_quality(lf, mapped(lf, identity), layout, as_of=AS_OF).collect()  # type: ignore[arg-type]
    return {(r["field"], r["status"], r["reason"]): r["rows"] for r in frame.to_dicts()}


# --- SHA-256 -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["", "a", "john.doe+promo@gmail.com", "josé", "李小龍", "emoji 🙂", "x" * 1000]
)
def test_polars_hash_equals_hashlib(text: str) -> None:
    frame = pl.DataFrame({"v": [text]}).lazy().select(plh.col("v").chash.sha2_256())
    assert frame.collect().item() == sha(text)


# --- email -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "meta", "google"),
    [
        ("  John.Doe+promo@GMail.com ", "john.doe+promo@gmail.com", "johndoe@gmail.com"),
        ("J.O.H.N+a+b@googlemail.com", "j.o.h.n+a+b@googlemail.com", "john@googlemail.com"),
        ("Jane.Roe+x@Clinic.ORG", "jane.roe+x@clinic.org", "jane.roe+x@clinic.org"),
        ("\tMARIA@hospital.org\n", "maria@hospital.org", "maria@hospital.org"),
        ("josé@exämple.de", "josé@exämple.de", "josé@exämple.de"),
    ],
)
def test_email_vectors(raw: str, meta: str, google: str) -> None:
    lf = contacts(email=[raw])
    assert hashed(lf, "meta")["EMAIL"].item() == sha(meta)
    assert hashed(lf, "google_ads")["hashed_email"].item() == sha(google)
    assert normalized(lf, "meta")["EMAIL"].item() == meta
    assert normalized(lf, "google_ads")["hashed_email"].item() == google


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("john.doe.gmail.com", "no_at_sign"),
        ("a@b@example.com", "multiple_at_signs"),
        ("@example.com", "bad_local_part"),
        ("john doe@example.com", "bad_local_part"),
        ("john@example", "bad_domain"),
        ("john@", "bad_domain"),
        ("john@exa mple.com", "bad_domain"),
        ("john@-example.com", "bad_domain"),
        # placeholders at domains that cannot hold a mailbox (RFC 2606, 6761, …)
        ("none@example.com", "reserved_domain"),
        ("Pat@Mail.Example.ORG ", "reserved_domain"),
        ("x@noemail.test", "reserved_domain"),
        ("x@clinic.invalid", "reserved_domain"),
        ("x@printer.local", "reserved_domain"),
        ("x@router.home.arpa", "reserved_domain"),
        ("x@ehr.internal", "reserved_domain"),
    ],
)
def test_invalid_email_is_null_and_counted(raw: str, reason: str) -> None:
    lf = contacts(email=[raw])
    assert hashed(lf, "meta")["EMAIL"].item() is None
    assert hashed(lf, "google_ads")["hashed_email"].item() is None
    assert quality(lf, "meta")[("email", "invalid", reason)] == 1


def test_gmail_rules_do_not_repair_invalid_addresses() -> None:
    lf = contacts(email=["a@b@gmail.com", "john doe@gmail.com"])
    assert hashed(lf, "google_ads")["hashed_email"].to_list() == [None, None]
    counts = quality(lf, "google_ads")
    assert counts[("email", "invalid", "multiple_at_signs")] == 1
    assert counts[("email", "invalid", "bad_local_part")] == 1


def test_gmail_address_left_empty_by_google_rules_is_invalid() -> None:
    lf = contacts(email=["+promo@gmail.com"])
    assert hashed(lf, "google_ads")["hashed_email"].item() is None
    assert quality(lf, "google_ads")[("email", "invalid", "bad_local_part")] == 1
    # Meta keeps the local part as written: valid there.
    assert hashed(lf, "meta")["EMAIL"].item() == sha("+promo@gmail.com")


# --- phone -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "country", "digits"),
    [
        ("(212) 555-0143", None, "12125550143"),
        ("212.555.0143", None, "12125550143"),
        ("212-555-0143", None, "12125550143"),
        ("2125550143", None, "12125550143"),
        ("+1 212 555 0143", None, "12125550143"),
        ("1 (212) 555-0143", None, "12125550143"),
        ("001-212-555-0143", None, "12125550143"),
        ("  +1 (212) 555-0143 ", "United States", "12125550143"),
        ("212-555-0143 ext. 12", None, "12125550143"),
        ("212 555 0143 x12", None, "12125550143"),
        ("+44 20 7031 3000", None, "442070313000"),
        ("0044 20 7031 3000", None, "442070313000"),
        ("011 44 20 7031 3000", None, "442070313000"),
        ("020 7031 3000", "GB", "442070313000"),
        ("020 7031 3000", "United Kingdom", "442070313000"),
        ("06 1234 5678", "IT", "390612345678"),
        ("(416) 555-0199", "Canada", "14165550199"),
    ],
)
def test_phone_vectors(raw: str, country: str | None, digits: str) -> None:
    lf = contacts(phone=[raw], country=[country])
    assert normalized(lf, "meta")["PHONE"].item() == digits
    assert hashed(lf, "meta")["PHONE"].item() == sha(digits)
    assert normalized(lf, "google_ads")["hashed_phone_number"].item() == "+" + digits
    assert hashed(lf, "google_ads")["hashed_phone_number"].item() == sha("+" + digits)


def test_phone_uses_default_country_calling_code() -> None:
    identity = IdentityMapping(phone="phone", default_country="GB")
    lf = contacts(phone=["020 7031 3000", "+1 212 555 0143"])
    assert normalized(lf, "meta", identity)["PHONE"].to_list() == ["442070313000", "12125550143"]


@pytest.mark.parametrize(
    ("raw", "country", "reason"),
    [
        ("555-0143", None, "too_short"),
        ("+1 212 555 01", None, "too_short"),
        ("+1 212 555 0143 9", None, "too_long"),
        ("+44 20 7031 3000 1234 5678", None, "too_long"),
        ("+0 212 555 0143", None, "bad_country_code"),
        ("(012) 555-0143", None, "bad_area_code"),
        ("call me", None, "no_digits"),
        ("7031 3000", "AQ", "unknown_calling_code"),
    ],
)
def test_invalid_phone_is_null_and_counted(raw: str, country: str | None, reason: str) -> None:
    lf = contacts(phone=[raw], country=[country])
    assert hashed(lf, "meta")["PHONE"].item() is None
    assert hashed(lf, "google_ads")["hashed_phone_number"].item() is None
    assert quality(lf, "meta")[("phone", "invalid", reason)] == 1


# --- names, city, state ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "meta", "google"),
    [
        ("José", "josé", "josé"),
        ("Jose\u0301", "josé", "josé"),  # decomposed accent hashes like the composed one
        ("  Smith-Jones ", "smithjones", "smith-jones"),
        ("O'Brien", "obrien", "o'brien"),
        ("MARY   Ann", "maryann", "mary ann"),
        ("Zoë", "zoë", "zoë"),
        ("Nguyễn", "nguyễn", "nguyễn"),
    ],
)
def test_name_vectors(raw: str, meta: str, google: str) -> None:
    lf = contacts(first_name=[raw], last_name=[raw])
    meta_frame = hashed(lf, "meta")
    google_frame = hashed(lf, "google_ads")
    assert meta_frame["FN"].item() == meta_frame["LN"].item() == sha(meta)
    assert google_frame["hashed_first_name"].item() == sha(google)
    assert google_frame["hashed_last_name"].item() == sha(google)


def test_name_without_letters_is_invalid() -> None:
    lf = contacts(first_name=["123", "---x"])
    assert normalized(lf, "meta")["FN"].to_list() == [None, "x"]
    assert quality(lf, "meta")[("first_name", "invalid", "no_letters")] == 1


@pytest.mark.parametrize(
    ("city", "expected"), [("New York", "newyork"), ("St. Louis", "stlouis"), ("Bogotá", "bogotá")]
)
def test_city(city: str, expected: str) -> None:
    assert hashed(contacts(city=[city]), "meta")["CT"].item() == sha(expected)


@pytest.mark.parametrize(
    ("state", "country", "expected"),
    [
        ("NY", None, "ny"),
        ("ny", "US", "ny"),
        ("N.Y.", None, "ny"),
        ("New York", None, "ny"),
        ("district of columbia", None, "dc"),
        ("Ontario", "CA", "ontario"),
        ("Île-de-France", "FR", "îledefrance"),
    ],
)
def test_state(state: str, country: str | None, expected: str) -> None:
    lf = contacts(state=[state], country=[country])
    assert hashed(lf, "meta")["ST"].item() == sha(expected)


def test_unknown_us_state_is_invalid() -> None:
    lf = contacts(state=["ZZ", "Calif."], country=["US", None])
    assert hashed(lf, "meta")["ST"].to_list() == [None, None]
    assert quality(lf, "meta")[("state", "invalid", "unknown_state")] == 2


# --- zip, country ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "country", "meta", "google"),
    [
        ("10027-1234", None, "10027", "10027"),
        ("100271234", None, "10027", "10027"),
        (" 100 27 ", None, "10027", "10027"),
        ("02134", None, "02134", "02134"),
        ("00901", "Puerto Rico", "00901", "00901"),
        ("SW1A 1AA", "GB", "sw1a1aa", "SW1A 1AA"),
        ("k1a  0b1", "CA", "k1a0b1", "K1A 0B1"),
    ],
)
def test_zip(raw: str, country: str | None, meta: str, google: str) -> None:
    lf = contacts(zip=[raw], country=[country])
    assert hashed(lf, "meta")["ZIP"].item() == sha(meta)
    assert hashed(lf, "google_ads")["postal_code"].item() == google


@pytest.mark.parametrize("raw", ["1002", "10027-12", "ABCDE", "SW1A 1AA"])
def test_bad_us_zip_is_invalid(raw: str) -> None:
    lf = contacts(zip=[raw])
    assert hashed(lf, "meta")["ZIP"].item() is None
    assert hashed(lf, "google_ads")["postal_code"].item() is None
    assert quality(lf, "meta")[("zip", "invalid", "not_5_digits")] == 1


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("United States", "us"),
        ("united states of america", "us"),
        ("USA", "us"),
        ("U.S.", "us"),
        ("U.S.A.", "us"),
        ("us", "us"),
        (" US ", "us"),
        ("UK", "gb"),
        ("Great Britain", "gb"),
        ("México", "mx"),
        ("Viet Nam", "vn"),
        ("DE", "de"),
        ("fr", "fr"),
    ],
)
def test_country(raw: str, code: str) -> None:
    lf = contacts(country=[raw])
    assert hashed(lf, "meta")["COUNTRY"].item() == sha(code)
    assert hashed(lf, "google_ads")["country_code"].item() == code.upper()


def test_blank_country_takes_default_and_unknown_is_invalid() -> None:
    lf = contacts(country=[None, "  ", "Narnia", "XX"])
    assert normalized(lf, "meta")["COUNTRY"].to_list() == ["us", "us", None, None]
    assert hashed(lf, "google_ads")["country_code"].to_list() == ["US", "US", None, None]
    counts = quality(lf, "meta")
    assert counts[("country", "defaulted", None)] == 2
    assert counts[("country", "invalid", "unknown_country")] == 2


def test_unmapped_country_is_default_country() -> None:
    identity = IdentityMapping(email="email", default_country="CA")
    assert hashed(contacts(email=["a@b.ca"]), "google_ads", identity)["country_code"].item() == "CA"


# --- birth date, gender, external id -----------------------------------------------------


def test_birth_date_parts() -> None:
    lf = contacts(birth_date=[dt.date(1985, 7, 4), dt.date(2001, 12, 25)])
    frame = hashed(lf, "meta")
    assert frame["DOBY"].to_list() == [sha("1985"), sha("2001")]
    assert frame["DOBM"].to_list() == [sha("07"), sha("12")]
    assert frame["DOBD"].to_list() == [sha("04"), sha("25")]


def test_birth_date_from_text_and_datetime() -> None:
    text = pl.LazyFrame({"birth_date": ["1985-07-04", "07/04/1985", "19850704", "soon"]})
    identity = IdentityMapping(birth_date="birth_date")
    assert normalized(text, "meta", identity)["DOBY"].to_list() == ["1985"] * 3 + [None]
    assert quality(text, "meta", identity)[("birth_date", "invalid", "unparseable")] == 1
    stamps = pl.LazyFrame({"birth_date": [dt.datetime(1985, 7, 4, 13, 30)]})
    assert normalized(stamps, "meta", identity)["DOBD"].item() == "04"


def test_implausible_birth_dates_are_invalid() -> None:
    lf = contacts(
        birth_date=[dt.date(2025, 6, 2), dt.date(1899, 12, 31), AS_OF, dt.date(1900, 1, 1)]
    )
    frame = normalized(lf, "meta")
    assert frame["DOBY"].to_list() == [None, None, "2025", "1900"]
    # The oldest and newest valid years hash (through the precomputed digests) too.
    assert hashed(lf, "meta")["DOBY"].to_list() == [None, None, sha("2025"), sha("1900")]
    counts = quality(lf, "meta")
    assert counts[("birth_date", "invalid", "future")] == 1
    assert counts[("birth_date", "invalid", "implausible")] == 1


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("F", "f"), ("female", "f"), ("Woman", "f"), ("M", "m"), (" MALE ", "m"), ("x", None)],
)
def test_gender(raw: str, expected: str | None) -> None:
    got = hashed(contacts(sex=[raw]), "meta")["GEN"].item()
    assert got == (sha(expected) if expected else None)


def test_external_id_is_plain_and_trimmed() -> None:
    frame = hashed(contacts(contact_id=[" C000000001 ", None]), "meta")
    assert frame["EXTERN_ID"].to_list() == ["C000000001", None]


# --- empty, already hashed, layout shape -------------------------------------------------


def test_layout_columns_exactly() -> None:
    lf = contacts(contact_id=["C1"], email=["a@clinic.org"])
    assert hashed(lf, "meta").columns == list(LAYOUTS["meta"])
    assert hashed(lf, "google_ads").columns == list(LAYOUTS["google_ads"])
    kept = hashed_layout(lf, mapped(lf, None), "meta", keep=["contact_id"]).collect()
    assert kept.columns == ["contact_id", *LAYOUTS["meta"]]


@pytest.mark.parametrize("blank", [None, "", "   ", "\t", "N/A", "null", "-", "???", "Unknown"])
def test_empty_stays_null_never_hash_of_empty(blank: str | None) -> None:
    lf = contacts(**{c: [blank] for c in COLUMNS if c not in ("country", "birth_date")})
    lf = lf.with_columns(birth_date=pl.lit(None, pl.Date))
    for layout in LAYOUTS:
        frame = hashed(lf, layout)
        values = [v for v in frame.row(0) if v is not None]
        assert EMPTY_SHA256 not in values
        # Only the country (filled from default_country) is present.
        assert values == ([sha("us")] if layout == "meta" else ["US"])


def test_already_hashed_values_pass_through_lowercased() -> None:
    digest = sha("john@clinic.org")
    lf = contacts(
        email=[digest.upper()], phone=[digest], first_name=[f" {digest} "], last_name=["Doe"]
    )
    for layout, columns in [
        ("meta", ("EMAIL", "PHONE", "FN")),
        ("google_ads", ("hashed_email", "hashed_phone_number", "hashed_first_name")),
    ]:
        frame = hashed(lf, layout)
        assert [frame[c].item() for c in columns] == [digest] * 3
        counts = quality(lf, layout)
        for field in ("email", "phone", "first_name"):
            assert counts[(field, "already_hashed", None)] == 1
        assert counts[("last_name", "valid", None)] == 1


def test_hashes_are_lowercase_hex() -> None:
    lf = contacts(email=["A@Example.com"], first_name=["Ann"], zip=["10027"], sex=["F"])
    frame = hashed(lf, "meta").drop("EXTERN_ID")
    for value in frame.row(0):
        assert value is None or (len(value) == 64 and value == value.lower())


# --- quality -----------------------------------------------------------------------------


def test_quality_counts() -> None:
    lf = contacts(
        contact_id=["C1", "C2", "C3", "C4", "C5"],
        email=["a@clinic.org", "nope", None, "b@example", sha("x")],
        phone=["(212) 555-0143", "555-0143", "+1 212 555 0143 99", "", None],
        zip=["10027", "1002", None, "02134-0001", "abc"],
    )
    identity = IdentityMapping(external_id="contact_id", email="email", phone="phone", zip="zip")
    assert quality(lf, "meta", identity) == {
        ("country", "defaulted", None): 5,
        ("email", "already_hashed", None): 1,
        ("email", "empty", None): 1,
        ("email", "invalid", "bad_domain"): 1,
        ("email", "invalid", "no_at_sign"): 1,
        ("email", "valid", None): 1,
        ("external_id", "valid", None): 5,
        ("phone", "empty", None): 2,
        ("phone", "invalid", "too_long"): 1,
        ("phone", "invalid", "too_short"): 1,
        ("phone", "valid", None): 1,
        ("zip", "empty", None): 1,
        ("zip", "invalid", "not_5_digits"): 2,
        ("zip", "valid", None): 2,
    }
    # Google's layout has no external id, city, state, birth date or gender.
    assert {field for field, _, _ in quality(lf, "google_ads", identity)} == {
        "country",
        "email",
        "phone",
        "zip",
    }


def test_quality_never_returns_values() -> None:
    lf = contacts(email=["secret.person@clinic.org", "nope"], phone=["(212) 555-0143", "1"])
    frame = identifier_quality(lf, mapped(lf, None), "meta", as_of=AS_OF).collect()
    assert frame.columns == ["field", "status", "reason", "rows"]
    text = str(frame.to_dicts())
    assert "secret" not in text and "nope" not in text and "555" not in text


MESSY = contacts(
    contact_id=["C1", " C2", "C3", "C4", "C5", "C6", "C7"],
    email=["  John.Doe+promo@GMail.com ", "bad", None, "a@b", "A" * 64, "x@example.co.uk", "n/a"],
    phone=["(212) 555-0143", "555-0143", "+44 20 7031 3000", "", "1" * 64, "+0 1", "x"],
    first_name=["José", "O'Brien", "123", None, "Jose\u0301", "Mary  Ann", "-"],
    last_name=["Smith-Jones", "Nguyễn", " ", "x", "y", "z", "w"],
    zip=["10027-1234", "1002", "SW1A 1AA", "02134", None, "abc", "100 27"],
    city=["New York", "St. Louis", "", "Bogotá", None, "1", "x"],
    state=["New York", "ZZ", "ny", None, "Ontario", "ca", "N.Y."],
    country=["United States", "USA", "GB", "Narnia", None, "CA", " us "],
    birth_date=[
        dt.date(1985, 7, 4),
        dt.date(2030, 1, 1),
        None,
        dt.date(1800, 1, 1),
        dt.date(2000, 2, 29),
        None,
        dt.date(1950, 12, 31),
    ],
    sex=["F", "M", "male", "x", None, "Female", "unknown"],
)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_staged_layout_equals_single_expressions(layout: str) -> None:
    staged = normalized_layout(MESSY, FULL, layout, as_of=AS_OF).collect()  # type: ignore[arg-type]
    assert staged.equals(normalized(MESSY, layout))


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_quality_agrees_with_layout(layout: str) -> None:
    frame = hashed(MESSY, layout)
    counts = quality(MESSY, layout)
    by_field = {
        "EMAIL": "email", "PHONE": "phone", "FN": "first_name", "LN": "last_name",
        "ZIP": "zip", "CT": "city", "ST": "state", "COUNTRY": "country", "DOBY": "birth_date",
        "GEN": "gender", "EXTERN_ID": "external_id", "hashed_email": "email",
        "hashed_phone_number": "phone", "hashed_first_name": "first_name",
        "hashed_last_name": "last_name", "country_code": "country", "postal_code": "zip",
    }  # fmt: skip
    for column, field in by_field.items():
        if column not in frame.columns:
            continue
        present = sum(
            rows
            for (name, status, _), rows in counts.items()
            if name == field and status in ("valid", "already_hashed", "defaulted")
        )
        assert frame[column].count() == present, column
        assert sum(rows for (name, _, _), rows in counts.items() if name == field) == 7


# --- the SDKs' helpers are wrong: we differ on purpose -----------------------------------


def test_differs_from_sdk_helpers() -> None:
    from facebook_business.adobjects.customaudience import CustomAudience

    row = ["José", "United States", "100 27", ""]
    sdk = CustomAudience.format_params(
        schema=["FN", "COUNTRY", "ZIP", "EMAIL"], users=[row], is_raw=True
    )["payload"]["data"][0]
    # What the Meta SDK does: drops é, truncates the country name, keeps the ZIP space,
    # hashes the empty cell.
    assert sdk == [sha("jos"), sha("un"), sha("100 27"), EMPTY_SHA256]
    lf = contacts(first_name=[row[0]], country=[row[1]], zip=[row[2]], email=[row[3]])
    ours = hashed(lf, "meta").select("FN", "COUNTRY", "ZIP", "EMAIL").row(0)
    assert list(ours) == [sha("josé"), sha("us"), sha("10027"), None]
    assert all(a != b for a, b in zip(ours, sdk, strict=True))

    from examples.remarketing.add_customer_match_user_list import normalize_and_hash

    # The google-ads example helper does not lowercase when it removes all whitespace.
    assert normalize_and_hash(" Jane.Roe@Clinic.org ", True) == sha("Jane.Roe@Clinic.org")
    lf = contacts(email=[" Jane.Roe@Clinic.org "])
    assert hashed(lf, "google_ads")["hashed_email"].item() == sha("jane.roe@clinic.org")


# --- idempotence -------------------------------------------------------------------------

_local = st.text(st.sampled_from("abcXYZ.+_-09éÉ"), min_size=1, max_size=12)
_domain = st.sampled_from(["gmail.com", "GoogleMail.com", "Example.ORG", "exämple.de", "x"])
_emails = st.one_of(
    st.builds(lambda a, d, s: f"{s}{a}@{d}{s}", _local, _domain, st.sampled_from(["", " ", "\t"])),
    st.text(max_size=20),
)


# the characters an address check turns on: separators, dots, a +tag, hyphens at label
# ends, whitespace of several kinds, letters of other scripts and cases, an IDN prefix
_email_chars = st.text(st.sampled_from("aZ9.+-_@ \t\u00a0éÉİß"), max_size=8)
_tricky_emails = st.one_of(
    st.builds(
        lambda pre, local, domain, tld, post: f"{pre}{local}@{domain}.{tld}{post}",
        st.sampled_from(["", " ", "\u2003"]),
        _email_chars,
        _email_chars,
        st.sampled_from(["com", "c", "DE", "xn--p1ai", "XN--P1AI", "xn--", "co-", "1x", "é"]),
        st.sampled_from(["", " ", ".", "\u2003"]),
    ),
    st.builds(
        lambda local, domain: f"{local}@{domain}",
        _email_chars,
        st.sampled_from(["gmail.com", "GoogleMail.com", "clinic.org", "x"]),
    ),
    st.text(max_size=20),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_tricky_emails, min_size=1, max_size=30))
def test_a_plainly_valid_email_is_valid_in_every_layout(values: list[str]) -> None:
    """The linkage skips a record whose raw e-mail is plainly valid when it looks for
    records with no e-mail (a superset prefilter): that must never skip a record that
    has no e-mail to a platform."""
    frame = pl.DataFrame({"v": values}, schema={"v": pl.String})
    plain = frame.select(plainly_valid_email(pl.col("v")).fill_null(False)).to_series()
    for layout, column in (("meta", "EMAIL"), ("google_ads", "hashed_email")):
        got = normalized(frame.lazy(), layout, IdentityMapping(email="v"))[column]
        missed = [v for v, p, g in zip(values, plain, got, strict=True) if p and g is None]
        assert not missed, (layout, missed)


# the spellings a phone check turns on: prefixes (international, trunk, NANP's 1), area
# codes and exchanges starting 0 or 1, separators of several kinds, extensions, digits of
# another script; and countries with and without a calling code, known or not
_PHONE_PARTS = (
    ["", " ", "+1", "+1 ", "+ 1 ", "001-", "0011 ", "1-", "1 ", "1", "+", "00", "011 ",
     "+44 ", "0", "+01", "011 1-", "0111", "11", "\u2003"],
    ["", "("],
    ["212", "425", "025", "129", "21", "2125", "9\u0661"],
    ["", ")", ") ", " ", ".", "-", "  ", "\t", "\u00a0", "/"],
    ["554", "154", "055", "55", "5545", "5\u06635"],
    ["-", "", "\u2003"],
    ["6755", "0000", "675", "67555"],
    ["", " ext 9", "\u2003", "\u0660"],
)  # fmt: skip
_COUNTRIES = [
    "US", "us", None, "", "United States", "Canada", "GB", "Italy", "San Marino", "IS", "ZZ",
    "Narnia", "Россия", "DE",
]  # fmt: skip


@pytest.mark.parametrize("default", ["US", "GB", "IS", "IT"])
def test_a_plainly_valid_phone_is_valid_in_every_layout(default: str) -> None:
    """The linkage skips a record whose raw phone is plainly valid when it looks for
    records with neither e-mail nor phone: that must never skip a record that has no phone
    to a platform — in any country (one without a calling code, unknown, blank) and under
    any default. Every spelling of a grid of number parts; those plainly valid with some
    calling code, in every country."""
    import itertools

    spellings = pl.Series("v", ["".join(p) for p in itertools.product(*_PHONE_PARTS)])
    maybe = spellings.filter(
        pl.select(plainly_valid_phone(pl.lit(spellings), pl.lit(True))).to_series()
    )
    assert 1_000 < maybe.len() < spellings.len() / 10
    frame = pl.DataFrame({"v": maybe}).join(
        pl.DataFrame({"c": _COUNTRIES}, schema={"c": pl.String}), how="cross"
    )
    identity = IdentityMapping(phone="v", country="c", default_country=default)
    known = calling_code_known(identity)
    plain = frame.select(plainly_valid_phone(pl.col("v"), known).fill_null(False)).to_series()
    assert plain.any() and not plain.all()
    for layout, column in (("meta", "PHONE"), ("google_ads", "hashed_phone_number")):
        got = normalized_layout(frame.lazy(), identity, layout).collect()[column]  # type: ignore[arg-type]
        missed = frame.filter(plain & got.is_null())
        assert missed.is_empty(), (layout, default, missed.head(5).rows())


def test_plainly_valid_phone_examples() -> None:
    values = [
        "(425) 554-6755",
        " 443.582.3962 ",
        "+1 718 532 3495",
        "001-217-524-5264",
        "1-213-515-6984",
        "555-0101",
        "(025) 554-6755",
        "425 554 675",
        "425-554-6755 x12",
        "+44 20 7946 0958",
        "42555467550",
        "+1 (425) 554-675\u0665",
        None,
    ]
    frame = pl.DataFrame({"v": values}, schema={"v": pl.String})
    expr = plainly_valid_phone(pl.col("v"), pl.lit(True))
    got = frame.select(expr.fill_null(False)).to_series().to_list()
    assert got == [True] * 5 + [False] * 8
    # without a calling code for the row, only a number that brings its own
    unknown = frame.select(plainly_valid_phone(pl.col("v"), pl.lit(False))).to_series()
    assert unknown.fill_null(False).to_list() == [False, False, True, True] + [False] * 9
    known = pl.DataFrame({"c": ["US", "Narnia", None, "IS"]}, schema={"c": pl.String})
    for default, expected in (
        ("US", [True, True, True, False]),
        ("IS", [True, False, False, False]),
    ):
        identity = IdentityMapping(phone="v", country="c", default_country=default)
        assert known.select(calling_code_known(identity)).to_series().to_list() == expected


def test_plainly_valid_email_examples() -> None:
    values = [
        " Pat.Lee+news@Clinic.ORG ",
        "pat@mail.xn--p1ai",
        "josé@exämple.de",
        "pat@",
        "pat@clinic",
        "@clinic.org",
        "pat@@clinic.org",
        ".+pat@gmail.com",
        "pat@clinic.org.",
        "pat@-clinic.org",
        None,
        "n/a",
    ]
    frame = pl.DataFrame({"v": values}, schema={"v": pl.String})
    got = frame.select(plainly_valid_email(pl.col("v")).fill_null(False)).to_series().to_list()
    assert got == [True, True, True] + [False] * 9


def _renormalizes_to_itself(values: list[str], identity: IdentityMapping) -> None:
    for layout in LAYOUTS:
        first = normalized(pl.LazyFrame({"v": values}, schema={"v": pl.String}), layout, identity)
        for column in first.columns:
            again = normalized(first.lazy().select(pl.col(column).alias("v")), layout, identity)
            assert again[column].to_list() == first[column].to_list(), (layout, column)


@settings(max_examples=60, deadline=None)
@given(st.lists(_emails, min_size=1, max_size=30))
def test_email_normalization_is_idempotent(values: list[str]) -> None:
    _renormalizes_to_itself(values, IdentityMapping(email="v"))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(max_size=16), min_size=1, max_size=30))
def test_name_normalization_is_idempotent(values: list[str]) -> None:
    _renormalizes_to_itself(values, IdentityMapping(first_name="v"))


# --- hashed_layout_frame: the distinct-value path equals the row path ----------------------

_pick = st.sampled_from
_frames = st.fixed_dictionaries(
    {
        "contact_id": st.text(max_size=4),
        "email": st.one_of(st.none(), _emails),
        "phone": st.one_of(
            st.none(),
            _pick(["+1 (425) 554-6755", "020 7946 0958", "(11) 91234-5678", "x", ""]),
        ),
        "first_name": st.one_of(
            st.none(), _pick(["Zoë", "ZOE", " zoe ", "Jo-Ann", "N/A"]), st.text(max_size=5)
        ),
        "last_name": st.one_of(st.none(), _pick(["Núñez", "Nu\u0301n\u0303ez", "O'Brien", ""])),
        "ZIP": st.one_of(
            st.none(), _pick(["12345", "12345-6789", " 02134", "SW1A 1AA", "1234", "abc"])
        ),
        "city": st.one_of(st.none(), _pick(["New York", "new  york", "São Paulo", "--"])),
        "state": st.one_of(st.none(), _pick(["NY", "new york", "Ontario", "zz", "Calif."])),
        "country": st.one_of(
            st.none(),
            _pick(["US", "us", " U.S. ", "United States", "Canada", "GB", "Brasil", "zz"]),
            _pick([" GB", "Brasil ", "united kingdom", "", "  ", "N/A", "unknown", "de\u0301"]),
            st.text(max_size=4),
        ),
        "sex": st.one_of(st.none(), _pick(["F", "male", "x", "Female "])),
        "birth_date": st.one_of(st.none(), st.dates(dt.date(1890, 1, 1), dt.date(2030, 1, 1))),
    }
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_frames, min_size=1, max_size=40), st.sampled_from(sorted(LAYOUTS)))
def test_hashed_layout_frame_equals_hashed_layout(rows: list, layout: str) -> None:
    schema = {c: pl.String for c in rows[0]} | {"birth_date": pl.Date}
    frame = pl.DataFrame(rows, schema=schema)
    identity = FULL.model_copy(update={"zip": "ZIP"})  # a CRM column named like a layout column
    want = hashed_layout(frame.lazy(), identity, layout, keep=["contact_id"], as_of=AS_OF).collect()  # type: ignore[arg-type]
    got = hashed_layout_frame(frame, identity, layout, keep=["contact_id"], as_of=AS_OF, min_rows=0)  # type: ignore[arg-type]
    assert got.equals(want)


@settings(max_examples=100, deadline=None)
@given(st.lists(_frames, min_size=1, max_size=40), st.sampled_from([0, 10_000]))
def test_layouts_built_together_equal_each_built_alone(rows: list, min_rows: int) -> None:
    # built together they share intermediates (an email's lowercase form, a phone's
    # digits): sharing must never hand one layout the other's value
    schema = {c: pl.String for c in rows[0]} | {"birth_date": pl.Date}
    frame = pl.DataFrame(rows, schema=schema)
    identity = FULL.model_copy(update={"zip": "ZIP"})
    layouts = ["google_ads", "meta"]
    got = hashed_layouts_frame(
        frame, identity, layouts, keep=["contact_id"], as_of=AS_OF, min_rows=min_rows
    )  # type: ignore[arg-type]
    assert list(got) == layouts
    for layout in layouts:
        want = hashed_layout(frame.lazy(), identity, layout, keep=["contact_id"], as_of=AS_OF)  # type: ignore[arg-type]
        assert got[layout].equals(want.collect()), layout


@settings(max_examples=60, deadline=None)
@given(st.lists(_frames, min_size=1, max_size=40))
def test_country_looked_up_per_distinct_value_whatever_its_type(rows: list) -> None:
    # the rows' country codes come from a table of the distinct raw values: a Categorical
    # country column must look up exactly what its text does
    schema = {c: pl.String for c in rows[0]} | {"birth_date": pl.Date}
    frame = pl.DataFrame(rows, schema=schema)
    identity = FULL.model_copy(update={"zip": "ZIP"})
    layouts = ["google_ads", "meta"]
    want = hashed_layouts_frame(frame, identity, layouts, keep=["contact_id"], as_of=AS_OF)  # type: ignore[arg-type]
    categorical = frame.with_columns(pl.col("country").cast(pl.Categorical))
    got = hashed_layouts_frame(
        categorical, identity, layouts, keep=["contact_id"], as_of=AS_OF, min_rows=0
    )  # type: ignore[arg-type]
    for layout in layouts:
        assert got[layout].equals(want[layout]), layout


# --- member key --------------------------------------------------------------------------

SALT = bytes(range(32))


def test_member_key_matches_hashlib() -> None:
    ids = ["C000000001", " C000000002 ", "José-7"]
    got = pl.DataFrame({"contact_id": [*ids, None, ""]}).select(member_key("contact_id", SALT))
    assert got.schema == {"member_key": pl.UInt64}
    expected = [
        int.from_bytes(hashlib.sha256(SALT + i.strip().encode()).digest()[:8], "big") for i in ids
    ]
    assert got["member_key"].to_list() == [*expected, None, None]


def test_member_key_depends_on_salt_and_takes_expressions() -> None:
    frame = pl.DataFrame({"id": ["C1"]})
    a = frame.select(member_key(pl.col("id"), SALT)).item()
    b = frame.select(member_key("id", SALT[::-1])).item()
    assert a != b


@pytest.mark.parametrize("salt", [b"", b"short", "not bytes"])
def test_member_key_rejects_weak_salt(salt: bytes) -> None:
    with pytest.raises(InternalError, match="salt of at least 16 bytes"):
        member_key("id", salt)


# --- bad input ---------------------------------------------------------------------------

EMAIL_ONLY = IdentityMapping(email="email")


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"default_country": "XX"}, "not an ISO 3166-1 alpha-2 code"),
        ({"default_country": "USA"}, "not an ISO 3166-1 alpha-2 code"),
        ({"mail": "email"}, "Extra inputs are not permitted"),
    ],
)
def test_identity_mapping_rejects(kwargs: dict, pattern: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=pattern):
        IdentityMapping(**kwargs)


def test_identity_mapping_is_frozen_and_normalizes_default_country() -> None:
    identity = IdentityMapping(default_country=" gb ")
    assert identity.default_country == "GB"
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        identity.email = "email"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("call", "error", "pattern"),
    [
        (
            lambda lf: hashed_layout(lf, EMAIL_ONLY, "tiktok"),  # type: ignore[arg-type]
            ConfigError,
            "unknown hashed layout",
        ),
        (
            lambda lf: hashed_layout(lf, IdentityMapping(email="mail"), "meta"),
            DataError,
            "maps email to column 'mail', which the source does not have",
        ),
        (
            lambda lf: identifier_quality(lf, IdentityMapping(phone="nope"), "google_ads"),
            DataError,
            "maps phone to column 'nope'",
        ),
        (
            lambda lf: hashed_layout(lf, EMAIL_ONLY, "meta", keep=["member"]),
            DataError,
            "columns to keep are not in the source: member",
        ),
        (
            lambda lf: hashed_layout(
                lf.with_columns(EMAIL=pl.lit("x")), EMAIL_ONLY, "meta", keep=["EMAIL"]
            ),
            DataError,
            "clash with meta layout columns: EMAIL",
        ),
        (
            lambda lf: hashed_layout(
                lf.with_columns(tags=pl.lit(["a"])), IdentityMapping(email="tags"), "meta"
            ),
            DataError,
            "map email to a text or date column",
        ),
    ],
)
def test_bad_input(call, error: type[Exception], pattern: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=pattern):
        call(contacts(email=["a@clinic.org"]))


@pytest.mark.parametrize(
    "raw",
    [
        "pat@myexample.com",
        "pat@test.com",
        "pat@example.co",
        "pat@local.clinic.org",
        "pat@examples.org",
    ],
)
def test_a_domain_that_only_looks_reserved_is_valid(raw: str) -> None:
    """The edge: a domain reserved only in part of its name is a real one."""
    lf = contacts(email=[raw])
    assert hashed(lf, "meta")["EMAIL"].item() == sha(raw)
    assert quality(lf, "meta")[("email", "valid", None)] == 1


def _reserved_reference(email: str) -> bool:
    """The reserved-domain rule as the privacy notes state it, in plain Python: the
    address ends with ``@`` or ``.`` followed by a reserved domain."""
    return any(
        email.endswith(f"{sep}{domain}") for domain in RESERVED_EMAIL_DOMAINS for sep in "@."
    )


def _reserved_grid() -> list[str]:
    """Adversarial addresses around every reserved domain: the domain itself, a subdomain,
    lookalikes (a letter in place of a dot, a longer or shorter name, a suffix after it,
    another separator), a newline after it (the end anchor must not match before one)."""
    values = ["", "@", ".", "example", "test", "a@", "a@.", "a@b"]
    for domain in RESERVED_EMAIL_DOMAINS:
        lookalike = domain.replace(".", "x")
        for body in (domain, f"sub.{domain}", lookalike, f"{domain}x", domain[1:], f"x{domain}"):
            for head in ("a@", "a.", "a", "a@b.", "a-", "a+"):
                for tail in ("", ".", "\n", ".org", " "):
                    values.append(f"{head}{body}{tail}")
    return values


def test_the_reserved_domain_test_is_the_rule_on_adversarial_addresses() -> None:
    """One regular expression stands for 22 ``ends_with`` tests: it agrees with the rule on
    every address of the grid, and the grid holds both answers for each domain."""
    values = _reserved_grid()
    got = pl.DataFrame({"e": values}).select(reserved_email(pl.col("e"))).to_series().to_list()
    want = [_reserved_reference(v) for v in values]
    assert got == want
    for domain in RESERVED_EMAIL_DOMAINS:
        assert _reserved_reference(f"a@{domain}") and not _reserved_reference(f"a@{domain}x")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="@.-abcdeilmnoprstxz\n ", max_size=24))
def test_the_reserved_domain_test_is_the_rule_on_any_text(value: str) -> None:
    got = pl.DataFrame({"e": [value]}).select(reserved_email(pl.col("e"))).item()
    assert got == _reserved_reference(value)
