"""On Meta, and in a file of hashed identifiers, the gate counts and releases only the
people the platform can match (policies/sendable.py, ``unmatched``).

Meta matches a customer-list row on an e-mail, a phone, or a first and last name with a
ZIP code, a full birth date or a city and state. An external id alone matches only ids
Meta's pixel has seen, which the CRM cannot tell. The attack: a marketer pads a
one-person segment with 120 consenting people who have no e-mail, phone or first name
(`is_null` is documented in docs/segments.md). Counted, the release is 121 people and
passes `min_size`; to Meta it is a list of one, each padding row a bare external id.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import polars as pl
import pytest
from conftest import (
    AS_OF,
    Project,
    approved_segment,
    blank_people,
    build_padded,
    frozen_clock,
    latest_report,
    listed,
    padding_blocked,
    released_ids,
)

DAY = AS_OF.isoformat()
BLANKED = ("email", "phone", "first_name")  # left: a last name, ZIP, city, external id
NO_ZIP = ("email", "phone", "zip")  # left: a first and last name with city and state


@pytest.fixture(scope="module", autouse=True)
def _stopped_clock() -> Iterator[None]:
    """The sample data is fixed on AS_OF: the wall clock stops there (in this process)."""
    with frozen_clock(AS_OF):
        yield


def _min_size(p: Project, destination: str) -> dict[str, Any]:
    (verdict,) = [
        v
        for v in latest_report(p)["verdicts"]
        if v["id"] == "min-size" and v["destination"] == destination
    ]
    return verdict


@pytest.mark.parametrize("destination", ["meta", "file"])
def test_attack_padding_with_people_meta_cannot_match(make_project: Any, destination: str) -> None:
    p, _ = padding_blocked(make_project, destination, BLANKED)
    verdict = _min_size(p, destination)  # the one person, shown coarsened below k
    assert verdict["evidence"]["members"] == "< 100", verdict
    assert verdict["evidence"]["no_identifier"] == 120, verdict


def test_a_name_with_city_and_state_is_enough_for_meta(make_project: Any) -> None:
    """The edge: no e-mail, phone or ZIP, but a first and last name with a city and state
    — Meta matches that, so they count (and a stricter rule would shrink real audiences)."""
    p = make_project(rows=3000)
    one, _ = blank_people(p, 120, NO_ZIP)
    built = build_padded(p, "meta", one, NO_ZIP)
    assert built.exit_code == 0, built.stdout + built.stderr
    # (a few of the sample's people miss a name, a city or a state as well: not counted)
    evidence = _min_size(p, "meta")["evidence"]
    assert evidence["members"] >= 110 and evidence["members"] + evidence["no_identifier"] == 121


def test_people_meta_cannot_match_are_counted_apart_and_not_released(
    make_project: Any,
) -> None:
    """A legitimate audience with a few people Meta cannot match: released without them,
    the report says how many; a file carrying the Meta layout leaves them out too."""
    p = make_project(rows=3000)
    _, padding = blank_people(p, 3, BLANKED)
    approved_segment(p, "ca", "meta, file", "state: {ne: ZZ}")
    for destination in ("meta", "file"):
        released = p.contact_ids(p.release("ca", destination).members)
        assert released and not released & set(padding), destination
    built = p.cli("build", "ca", "--as-of", DAY)
    assert built.exit_code == 0, built.stdout + built.stderr
    for destination in ("meta", "file"):
        assert _min_size(p, destination)["evidence"]["no_identifier"] == 3, destination


def test_attack_padding_with_names_and_birth_dates_meta_never_receives(
    make_project: Any,
) -> None:
    """Meta matches a name with a full birth date, but the connector uploads the birth
    year only: 120 people with a name and birth date and nothing else are no match to
    Meta — not counted there. A file carries the whole date: there they count."""
    p = make_project(rows=3000)
    no_place = ("email", "phone", "zip", "city")
    one, _ = blank_people(p, 120, no_place)
    attack = build_padded(p, "meta", one, no_place)
    assert attack.exit_code == 3, attack.stdout + attack.stderr
    assert _min_size(p, "meta")["evidence"]["no_identifier"] >= 100
    built = build_padded(p, "file", one, no_place)
    assert built.exit_code == 0, built.stdout + built.stderr
    assert _min_size(p, "file")["evidence"]["members"] >= 100


def test_attack_a_file_for_google_counted_by_the_meta_rule(make_project: Any) -> None:
    """A file ``for = "google_ads"`` carries both layouts by default; people with a name,
    city and state (no e-mail, phone or ZIP) are a Meta match but no Google one — the file
    is judged by Google's rule alone, consent included: a DENIED person is left out."""
    p = make_project(rows=3000)
    p.edit_toml(
        lambda t: t.replace(
            '[destinations.file]\nkind = "file"',
            '[destinations.file]\nkind = "file"\nfor = "google_ads"',
        )
    )
    one, _ = blank_people(p, 120, NO_ZIP)
    attack = build_padded(p, "file", one, NO_ZIP)
    assert attack.exit_code == 3, attack.stdout + attack.stderr
    assert _min_size(p, "file")["evidence"]["google_no_identifier"] >= 100
    # consent: a DENIED signal keeps a person out of a file for Google, as out of Google
    ids = sorted(p.contact_ids(p.release("pool", "meta").members))[200:500]
    denied = ids[:50]
    hit = pl.col("contact_id").is_in(denied)
    signal = pl.when(hit).then(pl.lit("denied")).otherwise(pl.col("ad_user_data_consent"))
    p.write_contacts(p.contacts().with_columns(signal.alias("ad_user_data_consent")))
    approved_segment(p, "some", "file", listed(ids))
    in_file = p.contact_ids(p.release("some", "file").members)
    assert in_file and not in_file & set(denied)


def _entered_twice(p: Project, chosen: list[str], *, without: tuple[str, ...] = ()) -> list[str]:
    """Copy ``chosen``'s CRM records under new ids (the same person entered twice: name,
    ZIP, birth date and consent alike; the copy without the ``without`` columns); return
    the copies' ids."""
    contacts = p.contacts()
    twice = contacts.filter(pl.col("contact_id").is_in(chosen)).with_columns(
        (pl.col("contact_id") + "D").alias("contact_id"),
        *(pl.lit(None, contacts.schema[c]).alias(c) for c in without),
    )
    p.write_contacts(pl.concat([contacts, twice]))
    return twice.get_column("contact_id").to_list()


@pytest.mark.parametrize("destination", ["meta", "file"])
def test_attack_records_entered_twice_without_email_or_phone(
    make_project: Any, destination: str
) -> None:
    """60 people with no e-mail or phone, each entered twice in the CRM, plus one person:
    121 records, 61 people — one platform user per name and ZIP. Counted by record
    (records were linked by e-mail and phone only) the list passed ``min_size``."""
    p = make_project(rows=3000)
    one, chosen = blank_people(p, 60, ("email", "phone"))
    copies = _entered_twice(p, chosen)
    approved_segment(p, "padded", destination, listed([one, *chosen, *copies]))
    attack = p.cli("build", "padded", "--as-of", DAY)
    assert attack.exit_code == 3, attack.stdout + attack.stderr
    assert _min_size(p, destination)["evidence"]["members"] == "< 100"


@pytest.mark.parametrize(
    ("destination", "email", "phone"),
    [
        ("meta", None, None),
        ("file", None, None),
        ("meta", "@", None),
        ("meta", "@clinic", None),
        ("meta", None, "(025) 554-6"),
        ("meta", None, "+1 425 554 "),
    ],
    ids=[
        "meta",
        "file",
        "meta-email-without-address",
        "meta-email-without-tld",
        "meta-phone-without-area-code",
        "meta-phone-too-short",
    ],
)
def test_attack_records_entered_again_without_the_zip(
    make_project: Any, destination: str, email: str | None, phone: str | None
) -> None:
    """60 people with no e-mail or phone, each entered a second time with only their name,
    city and state (no ZIP), plus one person: 121 records, and Meta matches both records
    of each on the name and place — 61 people. Counted apart (name + ZIP linked only the
    records that both had one), the list passed ``min_size``. The copies may carry an
    "e-mail" with an ``@`` that is no address (``c7@``), or a "phone" shaped like a number
    that is none (an area code starting 0, a digit short): still no identifier, still one
    person with the record of their name and place."""
    p = make_project(rows=3000)
    one, chosen = blank_people(p, 60, ("email", "phone"))
    placed = p.contacts().filter(
        pl.col("contact_id").is_in(chosen)
        & pl.all_horizontal(pl.col(c).is_not_null() for c in ("zip", "city", "state"))
    )
    chosen = placed.get_column("contact_id").to_list()
    assert len(chosen) >= 55
    copies = _entered_twice(p, chosen, without=("zip",))
    copy = pl.col("contact_id").is_in(copies)
    if email is not None:
        spelled = pl.when(copy).then(pl.col("contact_id") + email).otherwise(pl.col("email"))
        p.write_contacts(p.contacts().with_columns(spelled.alias("email")))
    if phone is not None:  # (three digits that vary: a phone of its own to each copy)
        digits = pl.col("contact_id").str.replace_all("[^0-9]", "").str.slice(-3).str.zfill(3)
        number = pl.when(copy).then(pl.lit(phone) + digits).otherwise(pl.col("phone"))
        p.write_contacts(p.contacts().with_columns(number.alias("phone")))
    approved_segment(p, "padded", destination, listed([one, *chosen, *copies]))
    attack = p.cli("build", "padded", "--as-of", DAY)
    assert attack.exit_code == 3, attack.stdout + attack.stderr
    assert _min_size(p, destination)["evidence"]["members"] == "< 100"


def test_a_record_without_zip_joins_one_namesake_of_its_place(make_project: Any) -> None:
    """The edge: two namesakes of one city at two ZIPs stay two people (their ZIPs tell
    them apart), and a third record of that name and place with no ZIP, e-mail or phone
    could be either: it joins the first of them — two people released, never three."""
    p = make_project(rows=3000)
    one, chosen = blank_people(p, 3, ("email", "phone"))
    pool = sorted(p.contact_ids(p.release("pool", "meta").members))
    others = [i for i in pool if i != one and i not in set(chosen)][:110]
    contacts = p.contacts()
    a, b, c = chosen
    first = contacts.filter(pl.col("contact_id") == a).row(0, named=True)
    same = {k: first[k] for k in ("first_name", "last_name", "city", "state", "country")}
    changed = [
        pl.when(pl.col("contact_id").is_in([b, c])).then(pl.lit(v)).otherwise(pl.col(k)).alias(k)
        for k, v in same.items()
    ]
    zips = (
        pl.when(pl.col("contact_id") == b)
        .then(pl.lit("99501" if first["zip"] != "99501" else "99502"))
        .when(pl.col("contact_id") == c)
        .then(None)
        .otherwise(pl.col("zip"))
        .alias("zip")
    )
    p.write_contacts(contacts.with_columns(*changed).with_columns(zips))
    ids = [one, *others, a, b, c]
    approved_segment(p, "namesakes", "meta", listed(ids))
    released = p.contact_ids(p.release("namesakes", "meta").members)
    assert a < b < c and {a, b} <= released and c not in released
    assert released == released_ids(p.contacts(), pl.col("contact_id").is_in(ids))
    built = p.cli("build", "namesakes", "--as-of", DAY)
    assert built.exit_code == 0, built.stdout + built.stderr
    assert _min_size(p, "meta")["evidence"]["members"] == len(released)


def test_records_entered_twice_are_released_once(make_project: Any) -> None:
    """The pass: 150 people, 60 of them entered twice without an e-mail or phone, are
    released once each, as the record with the smaller id (the original)."""
    p = make_project(rows=3000)
    one, chosen = blank_people(p, 60, ("email", "phone"))
    pool = sorted(p.contact_ids(p.release("pool", "meta").members))
    others = [i for i in pool if i != one and i not in set(chosen)][:89]
    copies = _entered_twice(p, chosen)
    ids = [one, *others, *chosen, *copies]
    approved_segment(p, "twice", "meta", listed(ids))
    released = p.contact_ids(p.release("twice", "meta").members)
    assert released == released_ids(p.contacts(), pl.col("contact_id").is_in(ids))
    # no copy is released (one without a ZIP joins its original by name, city and state)
    assert not released & set(copies)
    assert len(released) >= 145  # (a sampled person may have no ZIP, city nor state)
    built = p.cli("build", "twice", "--as-of", DAY)
    assert built.exit_code == 0, built.stdout + built.stderr
    assert _min_size(p, "meta")["evidence"]["members"] == len(released)


@pytest.mark.parametrize("destination", ["meta", "google_ads", "file"])
@pytest.mark.parametrize("domain", ["example.com", "noemail.test", "clinic.invalid"])
def test_attack_padding_with_placeholder_emails(
    make_project: Any, destination: str, domain: str
) -> None:
    """Pad a one-person segment with 120 people whose only identifier is a placeholder
    e-mail at a domain that cannot hold a mailbox (`p123@noemail.test`): no platform user
    has one. They are no identifier: not counted, and none is sent."""
    p = make_project(rows=3000)
    blanked = ("phone", "first_name")
    one, chosen = blank_people(p, 120, blanked)
    hit = pl.col("contact_id").is_in(chosen)
    fake = pl.when(hit).then(pl.lit("p") + pl.col("contact_id") + f"@{domain}")
    p.write_contacts(p.contacts().with_columns(fake.otherwise(pl.col("email")).alias("email")))
    approved_segment(p, "padded", destination, listed([one, *chosen]))
    attack = p.cli("build", "padded", "--as-of", DAY)
    assert attack.exit_code == 3, attack.stdout + attack.stderr
    evidence = _min_size(p, destination)["evidence"]
    assert evidence["members"] == "< 100", evidence


def test_columns_counts_the_identifiers_each_platform_would_receive(make_project: Any) -> None:
    """``columns --identifiers``: per platform, how many records hold a valid, empty or
    invalid identifier and why — a placeholder e-mail is ``reserved_domain`` — counts over
    the whole export, never a value, and a count below k shown as "< k"."""
    p = make_project(rows=3000)
    contacts = p.contacts()
    ids = contacts.get_column("contact_id").to_list()
    placeholder, no_at = ids[:150], ids[150:155]
    email = (
        pl.when(pl.col("contact_id").is_in(placeholder))
        .then(pl.lit("nobody@noemail.test"))
        .when(pl.col("contact_id").is_in(no_at))
        .then(pl.lit("person-at-clinic.org"))
        .otherwise(pl.col("email"))
    )
    p.write_contacts(contacts.with_columns(email.alias("email")))
    doc = p.cli_json("columns", "contacts", "--identifiers")
    found = doc["sources"]["contacts"]["identifiers"]
    assert set(found) == {"meta", "google_ads"} and doc["k"] == 100
    for layout in ("meta", "google_ads"):
        emails = {
            (o["status"], o["reason"]): o["rows"] for o in found[layout] if o["field"] == "email"
        }
        assert emails[("invalid", "reserved_domain")] == 150
        assert emails[("invalid", "no_at_sign")] == "< 100"
        assert isinstance(emails[("valid", None)], int) and emails[("valid", None)] > 2000
        assert {o["field"] for o in found[layout]} >= {"email", "phone", "country"}
    # the same counts as identifier_quality over the whole export, layout by layout
    from audiences.crm.identifiers import identifier_quality

    lf = pl.scan_parquet(p.root / "data" / "contacts.parquet")
    for layout in ("meta", "google_ads"):
        direct = identifier_quality(lf, p.config().identity, layout, as_of=AS_OF)
        expected = [
            {**row, "rows": row["rows"] if row["rows"] >= 100 else "< 100"}
            for row in direct.collect().to_dicts()
        ]
        assert found[layout] == expected
    human = p.cli("columns", "contacts", "--identifiers")
    assert human.exit_code == 0, human.stderr
    assert "reserved_domain" in human.stdout and "< 100" in human.stdout
    assert "noemail" not in human.stdout + json.dumps(doc)  # counts, never values
    # without the flag, the report is as before
    assert "identifiers" not in p.cli_json("columns", "contacts")["sources"]["contacts"]
