"""People, not records: k, difference checks and releases count persons.

A person with two CRM records (both opted in) must count once toward ``min-size`` and
appear once in each release — otherwise 57 people on 114 records pass k = 100.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from conftest import frozen_clock
from test_gate import AS_OF, NEWSLETTER, make_config, people, run

from audiences.core.state import connect
from audiences.crm.linkage import person_keys


@pytest.fixture(scope="module", autouse=True)
def _stopped_clock() -> Iterator[None]:
    """The sample data is fixed on AS_OF: the wall clock stops there (in this process)."""
    with frozen_clock(AS_OF):
        yield


@pytest.fixture
def project(tmp_path: Path) -> Iterator[dict[str, Any]]:
    state_dir = tmp_path / ".audiences"
    conn = connect(state_dir / "state.db")
    yield {"root": tmp_path, "state_dir": state_dir, "conn": conn}
    conn.close()


def twice(n: int, start: int = 0) -> pl.DataFrame:
    """``n`` people with two records each: the second record has its own id and phone
    but the first record's email (written differently: case and spaces)."""
    first = people(n, start)
    second = people(n, start + 500_000).with_columns(
        pl.Series("email", [f"  person.{i}@clinic.COM" for i in range(start, start + n)])
    )
    return pl.concat([first, second])


def test_sixty_people_on_120_records_never_pass_k_100(project: dict[str, Any]) -> None:
    outcome = run(project, NEWSLETTER, twice(60), ["meta"])
    assert outcome.blocked
    min_size = next(v for v in outcome.verdicts if v.kind == "min_size")
    assert not min_size.passed and min_size.evidence["members"] == 60
    # the report of a blocked build shows no exact count below k: 60 people, 120 records
    figures = outcome.report["figures"]
    assert (figures["eligible_members"], figures["eligible_records"]) == ("< 100", 120)


def test_each_person_is_released_once_with_all_their_identifiers(project: dict[str, Any]) -> None:
    frame = twice(150).with_columns(
        # the first records lack a phone: the person's phone comes from the second record
        pl.when(pl.col("contact_id") < "C000500000")
        .then(None)
        .otherwise(pl.col("phone"))
        .alias("phone")
    )
    outcome = run(project, NEWSLETTER, frame, ["meta"])
    assert not outcome.blocked, outcome.block_reasons
    members = outcome.releases["meta"].members
    assert members.height == 150
    assert members.get_column("EMAIL").n_unique() == 150  # never the same hashed email twice
    assert members.get_column("PHONE").null_count() == 0
    assert set(members.get_column("EXTERN_ID")) == {f"C{i:09d}" for i in range(150)}


def bridged(n: int) -> pl.DataFrame:
    """``n`` people with three records each: A (released), a minor's record B with A's
    email and C's phone, and C (released), which shares nothing with A directly."""
    a = people(n)
    c = people(n, 500_000).with_columns(
        pl.Series("phone", [f"(646) 555-{i:04d}" for i in range(n)])
    )
    b = people(n, 900_000, age=15).with_columns(
        pl.Series("email", a.get_column("email")), pl.Series("phone", c.get_column("phone"))
    )
    return pl.concat([a, b, c])


def test_a_record_a_filter_drops_still_links_two_released_records(
    project: dict[str, Any],
) -> None:
    """The attack: link two records of one person through a third that a filter drops (a
    minor's record with the first's email and the second's phone), so that the released
    records, sharing nothing directly, count twice: 60 people on 120 released records
    passed k = 100 when people were linked among the released records only."""
    outcome = run(project, NEWSLETTER, bridged(60), ["meta"])
    minors = next(v for v in outcome.verdicts if v.id == "minors")
    assert minors.evidence["removed"] == 60  # the bridges are dropped...
    assert outcome.blocked  # ...and still link: 60 people
    min_size = next(v for v in outcome.verdicts if v.kind == "min_size")
    assert not min_size.passed and min_size.evidence["members"] == 60
    assert outcome.report["figures"]["eligible_records"] == 120


def test_a_person_linked_through_a_dropped_record_is_released_once(
    project: dict[str, Any],
) -> None:
    outcome = run(project, NEWSLETTER, bridged(150), ["meta"])
    assert not outcome.blocked, outcome.block_reasons
    members = outcome.releases["meta"].members
    assert members.height == 150
    # released as the smallest id among the released records (A), with A's email and
    # phone: nothing of the minor's record is released
    assert set(members.get_column("EXTERN_ID")) == {f"C{i:09d}" for i in range(150)}
    minor = {f"C{i:09d}" for i in range(900_000, 900_150)}
    assert not minor & set(members.get_column("EXTERN_ID"))


def test_links_are_transitive_and_named_by_the_smallest_id(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    records = pl.DataFrame(
        {
            "contact_id": ["C3", "C1", "C2", "C9"],
            "email": ["a@x.org", "b@x.org", "A@X.org ", "z@x.org"],
            "phone": ["(212) 555-0001", "212-555-0002", "2125550002", None],
        }
    )
    # C3 ~ C2 by email, C2 ~ C1 by phone: one person, named C1; C9 alone
    assert person_keys(records, config, by="contact_id").to_list() == ["C1", "C1", "C1", "C9"]


@pytest.mark.parametrize("n", [0, 1])
def test_tiny_inputs(tmp_path: Path, n: int) -> None:
    records = pl.DataFrame(
        {"contact_id": ["C1"][:n], "email": ["a@x.org"][:n], "phone": [None][:n]}
    )
    records = records.with_columns(pl.col("phone").cast(pl.String))
    assert person_keys(records, make_config(tmp_path), by="contact_id").to_list() == ["C1"][:n]


def test_a_long_chain_of_records_is_one_person(tmp_path: Path) -> None:
    """Record i shares its email with record i+1 when i is even, its phone when i is odd:
    300 records, one person, named by the smallest id wherever it sits in the chain. (The
    label propagation this replaced stopped after 64 rounds, two links each: a chain this
    long came out as several people, each released with its own consent signals.)"""
    import random

    n = 300
    email = [
        f"p{i // 2 * 2}@x.org" if i % 2 == 0 else f"p{(i - 1) // 2 * 2}@x.org" for i in range(n)
    ]
    phone = [f"212555{((i + 1) // 2):04d}" for i in range(n)]
    ids = [f"C{i:04d}" for i in range(n)]
    ids[0], ids[n // 2] = ids[n // 2], ids[0]  # the smallest id mid-chain
    order = list(range(n))
    random.Random(7).shuffle(order)
    records = pl.DataFrame(
        {
            "contact_id": [ids[i] for i in order],
            "email": [email[i] for i in order],
            "phone": [phone[i] for i in order],
        }
    )
    assert set(person_keys(records, make_config(tmp_path), by="contact_id")) == {"C0000"}


def test_a_persons_strictest_signal_equals_the_window_over_every_record(tmp_path: Path) -> None:
    """The gate judges the window only over people with several records; the answer is
    the window over every candidate (one-record people keep their own value: null, an
    odd word, GRANTED or DENIED), record for record."""
    from policies.gate import _strictest, _strictest_per_person

    config = make_config(tmp_path)
    n = 400
    words = ["GRANTED", "DENIED", None, "maybe", "granted", "no"]
    cand = pl.DataFrame(
        {
            "contact_id": [f"C{i:04d}" for i in range(n)],
            # every third record shares its email with the next one; phones chain a few more
            "email": [f"p{i - (i % 3 == 1)}@x.org" for i in range(n)],
            "phone": [f"212555{(i // 7):04d}" if i % 5 == 0 else None for i in range(n)],
            "ad_pers": [words[(i * 7) % len(words)] for i in range(n)],
        }
    )
    got = _strictest_per_person(config, cand)
    persons = person_keys(cand, config, by="contact_id").alias("__person")
    assert persons.is_duplicated().any() and not persons.is_duplicated().all()
    expected = (
        cand.with_columns(persons)
        .with_columns(_strictest(cand, config, "ad_pers").over("__person"))
        .drop("__person")
    )
    assert got.equals(expected)
    assert not got.equals(cand)  # some person's records disagreed and were made to agree


@pytest.mark.parametrize(
    "values",
    [
        ["granted"] * 999 + [" Denied "],  # one refusal, spelled loosely, among many
        ["GRANTED", None, "maybe", "yes"] * 250,  # none
        [None] * 1000,
        [True] * 999 + [False],  # a Boolean column: False is a refusal
        [True, None] * 500,
    ],
)
def test_a_refusal_is_found_from_the_distinct_values_as_from_the_records(values: list) -> None:
    """The gate asks whether any candidate refused a consent signal of each column's
    distinct values; the answer is the records' own, row by row."""
    from audiences.crm.consent import consent_denied
    from policies.gate import _any_denied

    records = pl.DataFrame({"ad": values, "other": ["granted"] * len(values)})
    row_by_row = records.select(
        pl.any_horizontal(consent_denied(records, c) for c in ("ad", "other")).any()
    ).item()
    assert _any_denied(records, ["ad", "other"]) == row_by_row
    assert row_by_row == (values[-1] in (" Denied ", False))


def _named(**columns: list[Any]) -> pl.DataFrame:
    n = len(columns["contact_id"])
    base: dict[str, list[Any]] = {
        "email": [None] * n,
        "phone": [None] * n,
        "first_name": ["Sam"] * n,
        "last_name": ["Ortiz"] * n,
        "zip": ["10001"] * n,
        "city": [None] * n,
        "state": [None] * n,
    }
    return pl.DataFrame(base | columns, schema={c: pl.String for c in [*base, "contact_id"]})


def _full_config(tmp_path: Path) -> Any:
    config = make_config(tmp_path)
    identity = config.identity.model_copy(
        update={
            "first_name": "first_name",
            "last_name": "last_name",
            "city": "city",
            "state": "state",
        }
    )
    return config.model_copy(update={"identity": identity})


def test_a_person_entered_twice_without_email_or_phone_is_one(tmp_path: Path) -> None:
    """Same name and ZIP, nothing else: one platform user (Meta and Google match a row
    without an e-mail or phone on the name and postal code)."""
    records = _named(contact_id=["C2", "C1"])
    assert person_keys(records, _full_config(tmp_path), by="contact_id").to_list() == ["C1", "C1"]


def test_the_email_on_one_record_and_the_phone_on_the_other_is_one(tmp_path: Path) -> None:
    records = _named(
        contact_id=["C1", "C2"], email=["sam@x.org", None], phone=[None, "212-555-0101"]
    )
    assert person_keys(records, _full_config(tmp_path), by="contact_id").to_list() == ["C1", "C1"]


def test_namesakes_with_emails_of_their_own_stay_two(tmp_path: Path) -> None:
    """A father and son of one name at one ZIP, each with his own e-mail, are two people;
    a third record of the name with neither e-mail nor phone joins the first of them (it
    is one of the two to the platform, or someone else: counting it apart could only
    count one more person than the platform has)."""
    records = _named(
        contact_id=["C1", "C2", "C3", "C4"],
        email=["sam@x.org", "sam.jr@x.org", None, None],
        phone=[None, None, None, "212-555-0101"],
    )
    # C4's phone contradicts no one (the only phone): it joins C1 too
    got = person_keys(records, _full_config(tmp_path), by="contact_id").to_list()
    assert got == ["C1", "C2", "C1", "C1"]


def test_two_phones_tell_namesakes_apart(tmp_path: Path) -> None:
    records = _named(
        contact_id=["C1", "C2", "C3"],
        email=["sam@x.org", None, None],
        phone=[None, "212-555-0101", "212-555-0202"],
    )
    # C2 and C3 have different phones: both stay apart; C1 contradicts nobody (the only
    # e-mail) and could be either: it joins the first of them, C2 — two people, never
    # three (it stayed a person of its own while it was the first by id)
    got = person_keys(records, _full_config(tmp_path), by="contact_id").to_list()
    assert got == ["C1", "C1", "C3"]


def test_placeholder_emails_tell_no_one_apart(tmp_path: Path) -> None:
    """The attack (the CRM's own data): one person entered twice with a different
    placeholder address each time — no platform receives either, so the rows are one user
    matched on the name and ZIP: one person (the placeholders themselves still link the
    records that share one)."""
    records = _named(
        contact_id=["C1", "C2", "C3", "C4"],
        email=["p1@noemail.test", "p2@noemail.test", "sam@x.org", "sam@x.org"],
        last_name=["Ortiz", "Ortiz", "Reyes", "Reyes"],
    )
    got = person_keys(records, _full_config(tmp_path), by="contact_id").to_list()
    assert got == ["C1", "C1", "C3", "C3"]


def test_a_name_links_nothing_without_its_place(tmp_path: Path) -> None:
    """The edge: the same name with no ZIP and no city or state is no key at all — the
    platforms match no one on a name alone."""
    records = _named(contact_id=["C1", "C2"], zip=[None, None])
    assert person_keys(records, _full_config(tmp_path), by="contact_id").to_list() == ["C1", "C2"]


_LETTERS = str.maketrans("0123456789", "abcdefghij")


def test_a_record_with_only_a_name_and_place_joins_its_namesake(tmp_path: Path) -> None:
    """No e-mail, phone or ZIP: Meta matches the row on the name, city and state. It joins
    the first record of that name and place that has one of them — even when it is the
    first by id (never a person of its own while its namesake has a ZIP)."""
    place = {"city": ["Albany"] * 3, "state": ["NY"] * 3}
    records = _named(contact_id=["C1", "C2", "C3"], zip=[None, "12207", None], **place)
    got = person_keys(records, _full_config(tmp_path), by="contact_id").to_list()
    assert got == ["C1", "C1", "C1"]
    # in another city it is another person; with a phone of its own, Meta matches the
    # phone: a person of its own (docs/policy-rules.md, "Not defended yet")
    elsewhere = records.with_columns(
        pl.Series("city", ["Troy", "Albany", "Albany"]),
        pl.Series("phone", [None, None, "518-555-0101"]),
    )
    got = person_keys(elsewhere, _full_config(tmp_path), by="contact_id").to_list()
    assert got == ["C1", "C2", "C3"]


def test_a_bare_record_joins_the_first_namesake_with_a_zip(tmp_path: Path) -> None:
    """Two namesakes of one city at two ZIPs stay two; the record with neither joins the
    first of them by id (C2), not the two, and is not a third person."""
    place = {"city": ["Albany"] * 3, "state": ["NY"] * 3}
    records = _named(contact_id=["C1", "C2", "C3"], zip=[None, "12207", "12208"], **place)
    got = person_keys(records, _full_config(tmp_path), by="contact_id").to_list()
    assert got == ["C1", "C1", "C3"]


def _named_people(n: int, start: int = 0, **columns: Any) -> pl.DataFrame:
    """``people`` with a first and last name of their own, at one ZIP, city and state."""
    return people(n, start, **columns).with_columns(
        # a name of letters per person (the platforms keep only a name's letters)
        pl.Series("first_name", [f"Pat{i:03d}".translate(_LETTERS) for i in range(n)]),
        pl.Series("last_name", ["Lee"] * n),
        pl.Series("city", ["Albany"] * n),
        pl.Series("state", ["NY"] * n),
    )


def test_an_opt_out_on_any_record_of_the_person_excludes_the_person(
    project: dict[str, Any],
) -> None:
    """120 people each have an opted-in record with an e-mail and phone, and an older
    record the segment also selected that opted out with only their name and ZIP. Meta
    matches both rows to one user: the opt-out is the person's, and nobody is released —
    by the gate's own people, whatever the CRM-wide linkage (not run here) found."""
    config = _full_config(project["root"])
    opted_in = _named_people(120)
    older = _named_people(120, 700_000, email=None, phone=None, opt_in=False).with_columns(
        opted_in.get_column("first_name")
    )
    outcome = run(project, NEWSLETTER, pl.concat([opted_in, older]), ["meta"], config=config)
    consent = next(v for v in outcome.verdicts if v.kind == "consent")
    assert consent.evidence["no_opt_in"] == 120
    assert consent.evidence["duplicate_of_opt_out"] == 120, consent.evidence
    assert consent.evidence["excluded"] == 240 and outcome.blocked


def test_an_opt_out_reaches_the_other_records_of_its_person_only() -> None:
    """The consent rule's same-person step, row by row: a record is flagged when another
    record of its person opted out — records of people with one record, and the opted-out
    records themselves, are not; the people's records need not be adjacent."""
    from types import SimpleNamespace

    from policies.rules import _same_person_opted_out

    candidates = pl.DataFrame(
        {
            "opt_in": [True, False, True, False, True, True, True, False],
            "person": ["a", "b", "c", "a", "d", "d", "e", "e"],
        }
    )

    def context(persons: pl.Series) -> SimpleNamespace:
        return SimpleNamespace(
            candidates=candidates, persons=persons, persons_shared=persons.is_duplicated()
        )

    ctx = context(candidates.get_column("person"))
    same = _same_person_opted_out(ctx, [~pl.col("opt_in")])  # type: ignore[arg-type]
    assert same is not None
    assert same.to_list() == [True, False, False, False, False, False, True, False]
    alone = context(pl.Series([str(i) for i in range(8)]))
    assert _same_person_opted_out(alone, [~pl.col("opt_in")]) is None  # type: ignore[arg-type]


@pytest.mark.parametrize("bits", [22, 3])
def test_the_bridge_attack_fails_the_same_through_the_bucket_filter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bits: int
) -> None:
    """The gate asks "which people have several records" of ``distinct.duplicated``, which
    sends only rows of shared hash buckets to the exact test. Forced on at any length (and
    with 3 bucket bits: distinct people share buckets), the bridged records still make 60
    people, not 120, and block k = 100; 150 bridged people are released once each."""
    from audiences.crm import distinct

    monkeypatch.setattr(distinct, "_FEW_ROWS", 0)
    monkeypatch.setattr(distinct, "_MAX_BUCKET_BITS", bits)
    for n, blocked in ((60, True), (150, False)):
        state_dir = tmp_path / str(n) / ".audiences"
        conn = connect(state_dir / "state.db")
        try:
            project = {"root": tmp_path / str(n), "state_dir": state_dir, "conn": conn}
            outcome = run(project, NEWSLETTER, bridged(n), ["meta"])
        finally:
            conn.close()
        min_size = next(v for v in outcome.verdicts if v.kind == "min_size")
        assert outcome.blocked is blocked and min_size.evidence["members"] == n
        if not blocked:
            members = outcome.releases["meta"].members
            assert set(members.get_column("EXTERN_ID")) == {f"C{i:09d}" for i in range(n)}
