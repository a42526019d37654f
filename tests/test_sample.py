"""The synthetic CRM: documented schema, realism, messiness, determinism, files."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from audiences.core.errors import UsageError
from audiences.demo import sample

AS_OF = dt.date(2025, 6, 1)
ROWS = 20_000

# docs/internals.md, "The sample CRM", column by column.
DOCUMENTED_CONTACTS = {
    "contact_id": pl.String,
    "email": pl.String,
    "phone": pl.String,
    "first_name": pl.String,
    "last_name": pl.String,
    "birth_date": pl.Date,
    "sex": pl.String,
    "street": pl.String,
    "city": pl.String,
    "state": pl.String,
    "zip": pl.String,
    "country": pl.String,
    "preferred_language": pl.String,
    "created_at": pl.Datetime("us"),
    "marketing_opt_in": pl.Boolean,
    "hipaa_auth_date": pl.Date,
    "hipaa_auth_expires": pl.Date,
    "hipaa_auth_revoked_at": pl.Date,
    "ad_personalization_consent": pl.String,
    "do_not_contact": pl.Boolean,
    "deceased": pl.Boolean,
    "diagnosis_codes": pl.List(pl.String),
    "service_lines": pl.List(pl.String),
    "medication_classes": pl.List(pl.String),
    "insurance_type": pl.String,
    "ad_user_data_consent": pl.String,
    "share_health_data": pl.String,
    "explicit_health_marketing": pl.String,
    "limit_sensitive_pi": pl.Boolean,
    "opt_out_of_sharing": pl.Boolean,
    "mhmda_sale_authorization_date": pl.Date,
    "mhmda_sale_authorization_expires": pl.Date,
    "mhmda_sale_authorization_revoked": pl.Date,
}
DOCUMENTED_EVENTS = {
    "event_id": pl.String,
    "contact_id": pl.String,
    "event_type": pl.String,
    "event_time": pl.Datetime("us"),
    "department": pl.String,
    "visit_type": pl.String,
}
IDENTIFIER_COLUMNS = ["email", "phone", "first_name", "last_name", "birth_date", "sex", "street",
                      "city", "state", "zip", "country"]  # fmt: skip


@pytest.fixture(scope="module")
def crm() -> tuple[pl.DataFrame, pl.DataFrame]:
    return sample.generate(ROWS, seed=7, as_of=AS_OF)


@pytest.fixture(scope="module")
def contacts(crm: tuple[pl.DataFrame, pl.DataFrame]) -> pl.DataFrame:
    age = (pl.lit(AS_OF) - pl.col("birth_date")).dt.total_days() / 365.25
    return crm[0].with_columns(age=age.floor().cast(pl.Int32))


@pytest.fixture(scope="module")
def events(crm: tuple[pl.DataFrame, pl.DataFrame]) -> pl.DataFrame:
    return crm[1]


def has_code(prefix: str) -> pl.Expr:
    return pl.col("diagnosis_codes").list.eval(pl.element().str.starts_with(prefix)).list.any()


def share(frame: pl.DataFrame, expr: pl.Expr) -> float:
    return frame.select(expr.cast(pl.Float64).mean()).item()


# --------------------------------------------------------------------------- schema


def test_schema_is_exactly_the_documented_one(crm: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    contacts, events = crm
    assert list(contacts.schema.items()) == list(DOCUMENTED_CONTACTS.items())
    assert list(events.schema.items()) == list(DOCUMENTED_EVENTS.items())
    assert dict(sample.CONTACTS_SCHEMA) == DOCUMENTED_CONTACTS
    assert dict(sample.EVENTS_SCHEMA) == DOCUMENTED_EVENTS
    assert contacts.height == ROWS


@pytest.mark.parametrize("rows", [0, 1, 3])
def test_tiny_sizes_keep_the_schema(rows: int) -> None:
    contacts, events = sample.generate(rows, seed=1, as_of=AS_OF)
    assert contacts.height == rows
    assert contacts.schema == sample.CONTACTS_SCHEMA
    assert events.schema == sample.EVENTS_SCHEMA
    assert set(events["contact_id"]) <= set(contacts["contact_id"])


def test_identifiers_are_unique_and_events_reference_contacts(
    contacts: pl.DataFrame, events: pl.DataFrame
) -> None:
    assert contacts["contact_id"].is_unique().all()
    assert contacts["contact_id"].str.contains(r"^C\d{9}$").all()
    assert events["event_id"].is_unique().all()
    assert events.join(contacts, on="contact_id", how="anti").height == 0
    assert 5.0 < events.height / contacts.height < 7.0  # about 6 events per contact


# --------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_frames() -> None:
    first = sample.generate(3_000, seed=11, as_of=AS_OF)
    second = sample.generate(3_000, seed=11, as_of=AS_OF)
    for a, b in zip(first, second, strict=True):
        assert_frame_equal(a, b)


def test_different_seed_or_day_gives_different_data() -> None:
    base_contacts, base_events = sample.generate(3_000, seed=11, as_of=AS_OF)
    other_contacts, _ = sample.generate(3_000, seed=12, as_of=AS_OF)
    later_contacts, later_events = sample.generate(3_000, seed=11, as_of=dt.date(2026, 1, 1))
    assert not base_contacts.equals(other_contacts)
    assert (base_contacts["email"] != other_contacts["email"]).sum() > 2_000
    assert later_events["event_time"].max() > base_events["event_time"].max()
    assert not base_contacts["birth_date"].equals(later_contacts["birth_date"])


# --------------------------------------------------------------------------- messiness


@pytest.mark.parametrize(
    ("column", "pattern"),
    [
        ("email", r"[A-Z]"),  # mixed case
        ("email", r"^\s"),  # leading whitespace
        ("email", r"\s$"),  # trailing whitespace
        ("email", r"^\s*[a-zA-Z]+\.[a-zA-Z]+\d*@gmail\.com\s*$"),  # gmail with a dot
        ("email", r"\+[a-z0-9]+@(gmail|googlemail)\.com"),  # +tag
        ("email", r"@googlemail\.com"),
        ("phone", r"^\(\d{3}\) 555-\d{4}$"),
        ("phone", r"^\d{3}-555-\d{4}$"),
        ("phone", r"^\d{3}\.555\.\d{4}$"),
        ("phone", r"^\+1 \d{3} 555 \d{4}$"),
        ("phone", r"^001 \d{3} 555 \d{4}$"),
        ("phone", r"^001-\d{3}-555-\d{4}$"),
        ("phone", r"^1-\d{3}-555-\d{4}$"),
        ("first_name", r"[éëíóúñ]"),  # accents
        ("first_name", r"^\s|\s$"),
        ("first_name", r"^[A-ZÀ-Þ\s'-]+$"),  # all upper case
        ("last_name", r"^[\p{L}' .]+-[\p{L}' .]+$"),  # hyphenated
        ("last_name", r"'"),  # O'Brien
        ("last_name", r"Nguyễn|Müller|NGUYỄN|MÜLLER"),
        ("last_name", r"\p{L} \p{L}"),  # van der Berg
        ("zip", r"^\d{5}-\d{4}$"),
        ("zip", r"^\s|\s"),
        ("country", r"^United States$"),
        ("country", r"^us$"),
    ],
)
def test_messy_identifier_forms_are_present(
    contacts: pl.DataFrame, column: str, pattern: str
) -> None:
    assert contacts[column].str.contains(pattern).sum() >= 5, (column, pattern)


def test_every_phone_is_a_us_number_in_some_format(contacts: pl.DataFrame) -> None:
    digits = contacts["phone"].drop_nulls().str.replace_all(r"\D", "")
    national = digits.str.replace(r"^(001|1)(\d{10})$", "$2")
    assert national.str.contains(r"^[2-9]\d{2}5\d{6}$").all()  # exchanges 500-599


@pytest.mark.parametrize("column", IDENTIFIER_COLUMNS)
def test_identifier_columns_have_some_missing_values(contacts: pl.DataFrame, column: str) -> None:
    assert 0.01 <= contacts[column].null_count() / contacts.height <= 0.09


def test_duplicate_people_are_spelled_differently(contacts: pl.DataFrame) -> None:
    # Same birth date and same 10 phone digits: the same person (phones are per person).
    keyed = contacts.with_columns(
        digits=pl.col("phone").str.replace_all(r"\D", "").str.slice(-10)
    ).filter(pl.col("digits").is_not_null() & pl.col("birth_date").is_not_null())
    groups = keyed.group_by("birth_date", "digits").agg(
        pl.len().alias("rows"), pl.col("phone").n_unique().alias("forms"),
        pl.col("contact_id").n_unique().alias("ids"),
    ).filter(pl.col("rows") > 1)  # fmt: skip
    assert 0.01 * ROWS <= groups.height <= 0.03 * ROWS
    assert (groups["forms"] >= 2).all()  # a repeat never copies the phone string
    assert (groups["ids"] == groups["rows"]).all()


# --------------------------------------------------------------------------- realism


def test_age_pyramid(contacts: pl.DataFrame) -> None:
    ages = contacts["age"].drop_nulls()
    assert ages.min() >= 0
    assert ages.max() <= 95
    assert 0.15 <= (ages < 18).mean() <= 0.25
    assert 0.10 <= (ages >= 65).mean() <= 0.22


@pytest.mark.parametrize(
    ("state", "low", "high"),
    [("NY", 100, 149), ("NJ", 70, 89), ("CA", 900, 961), ("TX", 750, 799), ("FL", 320, 349),
     ("PA", 150, 196), ("IL", 600, 629), ("MA", 10, 27)],
)  # fmt: skip
def test_zip_prefixes_match_the_state(
    contacts: pl.DataFrame, state: str, low: int, high: int
) -> None:
    zip3 = (
        contacts.filter(pl.col("state").str.to_uppercase() == state)["zip"]
        .drop_nulls()
        .str.strip_chars()
        .str.slice(0, 3)
        .cast(pl.Int32)
    )
    assert zip3.len() > 50
    assert zip3.is_between(low, high).all()


def test_city_belongs_to_its_state(contacts: pl.DataFrame) -> None:
    pairs = contacts.select(
        pl.col("city").str.to_lowercase(), pl.col("state").str.to_uppercase()
    ).drop_nulls()
    assert pairs.filter(pl.col("city") == "new york")["state"].unique().to_list() == ["NY"]
    assert pairs.filter(pl.col("city") == "houston")["state"].unique().to_list() == ["TX"]


def test_conditions_depend_on_age_and_sex(contacts: pl.DataFrame) -> None:
    young = contacts.filter(pl.col("age").is_between(18, 35))
    old = contacts.filter(pl.col("age") >= 65)
    minors = contacts.filter(pl.col("age") < 18)
    assert share(old, has_code("E11")) > 3 * share(young, has_code("E11"))
    assert share(old, has_code("I25")) > 5 * share(young, has_code("I25"))
    assert share(minors, has_code("J45")) > 0.04
    assert 0.001 < share(contacts, has_code("C")) < 0.03  # cancer is rare
    pregnant = contacts.filter(has_code("O"))
    assert pregnant.height > 20
    assert pregnant["sex"].drop_nulls().unique().to_list() == ["F"]
    assert pregnant["age"].drop_nulls().is_between(18, 45).all()


def test_service_lines_and_medications_follow_diagnoses(contacts: pl.DataFrame) -> None:
    def lines(name: str) -> pl.Expr:
        return pl.col("service_lines").list.contains(name)

    def meds(name: str) -> pl.Expr:
        return pl.col("medication_classes").list.contains(name)

    diabetic = contacts.filter(has_code("E11"))
    assert diabetic.select(lines("endocrinology").all()).item()
    assert share(diabetic, meds("metformin") | meds("insulin")) > 0.8
    coronary = contacts.filter(has_code("I25"))
    assert coronary.select((lines("cardiology") & meds("statin")).all()).item()
    depressed = contacts.filter(has_code("F32") | has_code("F33"))
    assert depressed.select(lines("behavioral_health").all()).item()
    assert share(depressed, meds("ssri")) > 0.4
    assert contacts.filter(pl.col("diagnosis_codes").list.len() == 0).select(
        pl.col("medication_classes").list.len().max()
    ).item() in (0, None)


def test_insurance_depends_on_age(contacts: pl.DataFrame) -> None:
    medicare = contacts.filter(pl.col("insurance_type") == "medicare")
    assert share(medicare.drop_nulls("age"), pl.col("age") >= 65) > 0.8
    seniors = contacts.filter(pl.col("age") >= 65)
    assert share(seniors, pl.col("insurance_type") == "medicare") > 0.85
    assert set(contacts["insurance_type"]) == {"commercial", "medicare", "medicaid", "self_pay"}


def test_consent_rates(contacts: pl.DataFrame) -> None:
    assert 0.55 <= share(contacts, pl.col("marketing_opt_in")) <= 0.65
    authorized = contacts.filter(pl.col("hipaa_auth_date").is_not_null())
    assert 0.20 <= authorized.height / contacts.height <= 0.30
    assert share(authorized, pl.col("hipaa_auth_expires") < AS_OF) > 0.05
    assert share(authorized, pl.col("hipaa_auth_revoked_at").is_not_null()) > 0.02
    assert authorized.select(
        (pl.col("hipaa_auth_revoked_at") >= pl.col("hipaa_auth_date")).all(),
        (pl.col("hipaa_auth_expires") > pl.col("hipaa_auth_date")).all(),
        (pl.col("hipaa_auth_date") <= AS_OF).all(),
    ).row(0) == (True, True, True)
    unauthorized = contacts.filter(pl.col("hipaa_auth_date").is_null())
    assert unauthorized["hipaa_auth_expires"].is_null().all()
    assert unauthorized["hipaa_auth_revoked_at"].is_null().all()
    assert set(contacts["ad_personalization_consent"]) == {"granted", "denied", None}
    assert 0.02 <= share(contacts, pl.col("do_not_contact")) <= 0.04
    assert 0.005 <= share(contacts, pl.col("deceased")) <= 0.02
    old = contacts.filter(pl.col("age") >= 80)
    young = contacts.filter(pl.col("age") < 50)
    assert share(old, pl.col("deceased")) > 5 * share(young, pl.col("deceased"))


def test_events_are_consistent(contacts: pl.DataFrame, events: pl.DataFrame) -> None:
    as_of = dt.datetime.combine(AS_OF, dt.time())
    assert set(events["event_type"]) == {"visit", "appointment", "portal_login", "email_click"}
    future = events.filter(pl.col("event_time") >= as_of)
    assert future.height > 100
    assert set(future["event_type"]) == {"appointment"}
    assert future["event_time"].max() < as_of + dt.timedelta(days=181)
    visits = events.filter(pl.col("event_type") == "visit")
    assert share(visits, pl.col("event_time") >= as_of - dt.timedelta(days=3 * 365)) > 0.85
    clinical = pl.col("event_type").is_in(["visit", "appointment"])
    assert events.select(
        (pl.col("department").is_not_null() == clinical).all(),
        (pl.col("visit_type").is_not_null() == (pl.col("event_type") == "visit")).all(),
    ).row(0) == (True, True)
    # Departments are among the contact's service lines (or primary care / pediatrics).
    joined = events.filter(clinical).join(contacts, on="contact_id")
    assert joined.select(
        (
            pl.col("service_lines").list.contains(pl.col("department"))
            | pl.col("department").is_in(["primary_care", "pediatrics"])
        ).all()
    ).item()
    # No event before the record existed; no future appointments for the deceased.
    assert (joined["event_time"] >= joined["created_at"].dt.truncate("1d")).all()
    dead = future.join(contacts.filter("deceased"), on="contact_id")
    assert dead.height == 0
    no_email = events.join(contacts.filter(pl.col("email").is_null()), on="contact_id")
    assert "email_click" not in set(no_email["event_type"])


# --------------------------------------------------------------------------- files


def read_csv_back(path: Path, schema: pl.Schema) -> pl.DataFrame:
    as_text = {c: (pl.String if isinstance(t, pl.List) else t) for c, t in schema.items()}
    frame = pl.read_csv(path, schema=as_text)
    return frame.with_columns(
        pl.when(pl.col(c) == "").then(pl.lit([], pl.List(pl.String)))
        .otherwise(pl.col(c).str.split(sample.LIST_SEPARATOR)).alias(c)
        for c in sample.LIST_COLUMNS if c in schema
    )  # fmt: skip


def test_write_round_trips_parquet_and_csv(tmp_path: Path) -> None:
    written = sample.write(tmp_path / "crm", 2_000, seed=5, as_of=AS_OF)
    contacts, events = sample.generate(2_000, seed=5, as_of=AS_OF)
    assert {k: [p.name for p in v] for k, v in written.items()} == {
        "contacts": ["contacts.parquet", "contacts.csv"],
        "events": ["events.parquet", "events.csv"],
    }
    assert_frame_equal(pl.read_parquet(tmp_path / "crm/contacts.parquet"), contacts)
    assert_frame_equal(pl.read_parquet(tmp_path / "crm/events.parquet"), events)
    csv_contacts = read_csv_back(tmp_path / "crm/contacts.csv", sample.CONTACTS_SCHEMA)
    assert_frame_equal(csv_contacts, contacts)
    assert_frame_equal(read_csv_back(tmp_path / "crm/events.csv", sample.EVENTS_SCHEMA), events)
    assert sorted(p.name for p in (tmp_path / "crm").iterdir()) == [
        "contacts.csv", "contacts.parquet", "events.csv", "events.parquet",
    ]  # fmt: skip
    assert {p.stat().st_mode & 0o777 for p in (tmp_path / "crm").iterdir()} == {0o600}


def test_write_only_the_asked_formats(tmp_path: Path) -> None:
    written = sample.write(tmp_path, 50, seed=1, as_of=AS_OF, formats=["csv"])
    assert written == {"contacts": [tmp_path / "contacts.csv"], "events": [tmp_path / "events.csv"]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["contacts.csv", "events.csv"]


def test_failed_write_leaves_old_files_and_no_temp_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "contacts.csv").write_text("old\n")

    def broken(self: pl.DataFrame, file: object, **kwargs: object) -> None:
        Path(str(file)).write_text("half")
        raise OSError("disk full")

    monkeypatch.setattr(pl.DataFrame, "write_csv", broken)
    with pytest.raises(OSError, match="disk full"):
        sample.write(tmp_path, 50, seed=1, as_of=AS_OF, formats=["parquet", "csv"])
    assert (tmp_path / "contacts.csv").read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["contacts.csv", "contacts.parquet"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rows": -1}, "rows must be between 0 and"),
        ({"rows": sample.MAX_ROWS + 1}, "rows must be between 0 and"),
        ({"rows": 1.5}, "rows must be a whole number"),
        ({"rows": True}, "rows must be a whole number"),
        ({"rows": 10, "as_of": "2025-06-01"}, "as_of must be a date"),
        ({"rows": 10, "as_of": dt.datetime(2025, 6, 1)}, "as_of must be a date"),
        ({"rows": 10, "abroad": -1}, "rows must be between 0 and"),
        ({"rows": sample.MAX_ROWS, "abroad": 1}, "rows plus abroad must be at most"),
    ],
)
def test_bad_generate_arguments(kwargs: dict[str, object], message: str) -> None:
    kwargs = {"as_of": AS_OF, **kwargs}
    with pytest.raises(UsageError, match=message):
        sample.generate(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("formats", "message"),
    [(["xlsx"], "unknown sample data format.*xlsx"), ([], r"\(none given\)"),
     (["csv", "json"], "json — use one or more of parquet, csv")],
)  # fmt: skip
def test_bad_formats(tmp_path: Path, formats: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        sample.write(tmp_path, 10, seed=0, as_of=AS_OF, formats=formats)
    assert list(tmp_path.iterdir()) == []


def test_identifiers_belong_to_one_person_except_duplicates() -> None:
    # Unrelated people never share a mailbox or a phone number (a duplicate record shares
    # its person's): the duplicate-of-opt-out rule links records on them.
    from audiences.crm.identifiers import IdentityMapping, normalized_exprs

    contacts, _ = sample.generate(60_000, seed=11, as_of=AS_OF)
    identity = IdentityMapping(email="email", phone="phone")
    keys = normalized_exprs(identity, "google_ads", schema=contacts.schema)
    frame = contacts.select(
        keys["hashed_email"].alias("mailbox"),
        keys["hashed_phone_number"].alias("phone"),
        pl.col("birth_date"),
    )
    for key in ("mailbox", "phone"):
        shared = (
            frame.drop_nulls([key, "birth_date"])
            .group_by(key)
            .agg(pl.len(), pl.col("birth_date").n_unique().alias("people"))
            .filter(pl.col("len") > 1)
        )
        assert shared.height > 0, key  # duplicates do share their person's identifiers
        # ... and a shared key is one person's: every record behind it has one birth date
        assert shared["people"].max() == 1, key


def test_privacy_consent_columns_come_last_with_missing_and_withdrawn_values(crm):
    contacts, _ = crm
    assert contacts.columns[-len(sample.PRIVACY_COLUMNS) :] == list(sample.PRIVACY_COLUMNS)
    for column in ("share_health_data", "explicit_health_marketing"):
        values = set(contacts.get_column(column).to_list())
        assert values == {"granted", "withdrawn", "denied", None}
    assert set(contacts.get_column("ad_user_data_consent").to_list()) == {
        "granted",
        "denied",
        None,
    }
    for column in ("limit_sensitive_pi", "opt_out_of_sharing"):
        counts = contacts.get_column(column).value_counts().to_dict(as_series=False)
        assert set(counts[column]) == {True, False, None}
    gpc = contacts.get_column("opt_out_of_sharing").mean()
    assert 0.05 < float(gpc or 0) < 0.2  # a few per cent send GPC
    # authorizations to sell: rare, some over a year old (expired), some revoked, some
    # with their expiry recorded; never signed after the day the sample is drawn on
    signed = contacts.get_column("mhmda_sale_authorization_date")
    assert 0.04 < 1 - signed.null_count() / contacts.height < 0.12
    assert signed.max() <= AS_OF  # type: ignore[operator]
    age = (pl.lit(AS_OF) - signed).dt.total_days()
    old = contacts.select((age >= 365).sum()).item()
    assert 0 < old < contacts.height - signed.null_count()
    revoked = contacts.get_column("mhmda_sale_authorization_revoked")
    assert 0 < revoked.drop_nulls().len() < signed.drop_nulls().len() / 4
    assert contacts.filter(pl.col("mhmda_sale_authorization_revoked") < signed).is_empty()
    expires = contacts.get_column("mhmda_sale_authorization_expires")
    assert 0 < expires.drop_nulls().len() < signed.drop_nulls().len()
    assert contacts.filter(signed.is_null() & revoked.is_not_null()).is_empty()


def test_people_abroad_follow_and_leave_the_rows_before_them_unchanged(
    crm: tuple[pl.DataFrame, pl.DataFrame],
) -> None:
    from audiences.core.config import IdentityMapping, ProjectConfig
    from audiences.crm.jurisdiction import jurisdictions

    contacts, events = sample.generate(ROWS, seed=7, as_of=AS_OF, abroad=1_500)
    assert_frame_equal(contacts.head(ROWS), crm[0])  # what tests and benchmarks rely on
    assert_frame_equal(events.head(crm[1].height), crm[1])
    assert contacts.schema == sample.CONTACTS_SCHEMA and contacts.height == ROWS + 1_500
    assert contacts["contact_id"].is_unique().all() and events["event_id"].is_unique().all()
    assert events.join(contacts, on="contact_id", how="anti").height == 0
    abroad = contacts.tail(1_500)
    assert abroad["state"].is_null().all()
    assert abroad["phone"].drop_nulls().str.starts_with("+").all()
    assert {"DE", "FR", "IE", "GB", "Germany"} <= set(abroad["country"])
    config = ProjectConfig.model_validate(
        {
            "sources": {"contacts": {"path": "contacts.parquet"}},
            "identity": IdentityMapping(state="state", country="country").model_dump(),
        }
    )
    found = jurisdictions(contacts, config)
    codes = found.list.first().value_counts().to_dict(as_series=False)
    counted = dict(zip(codes["jurisdictions"], codes["count"], strict=True))
    assert counted["EEA"] + counted["UK"] == 1_500  # every one of them, and no US record
    assert counted["US-WA"] > 100 and counted["US-CA"] > 1_000  # people the packs apply to
    # people abroad carry the same consent vocabulary (with missing and withdrawn values)
    assert set(abroad["explicit_health_marketing"]) == {"granted", "withdrawn", "denied", None}
    # no mailbox is shared between a US record and a record abroad
    from audiences.crm.identifiers import normalized_exprs

    mailbox = normalized_exprs(
        IdentityMapping(email="email"), "google_ads", schema=contacts.schema
    )["hashed_email"]
    keyed = contacts.select(mailbox.alias("m"), (pl.int_range(pl.len()) >= ROWS).alias("away"))
    mixed = keyed.drop_nulls("m").group_by("m").agg(pl.col("away").n_unique().alias("sides"))
    assert mixed["sides"].max() == 1
