"""Duplicates of opt-outs (audiences.crm.linkage).

The linkage compares cheap coarse keys before normalizing anything; a wrong coarse key
would silently let a duplicate of an opted-out person through. So: (1) the invariant
``g(raw) == g(normalized(raw))`` on every row the stage calls reliable, over adversarial
values; (2) the whole result against a direct reference that normalizes every record and
joins the exact keys; (3) the cases by hand — each way of writing the same person that the
platforms would match, and the records that must not be linked.
"""

from __future__ import annotations

import hashlib
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audiences.core.config import ProjectConfig
from audiences.crm import linkage
from audiences.crm.identifiers import RESERVED_EMAIL_DOMAINS, normalized_layout
from audiences.crm.linkage import (
    PHONE_TAIL,
    CoarseMemo,
    flag_duplicates_of_opt_outs,
    links_for,
    person_keys,
    person_links,
)

FLAG = "dup"
COLUMNS = ("contact_id", "email", "phone", "first_name", "last_name", "zip", "country")


def config(**consent: Any) -> ProjectConfig:
    consent = consent or {
        "marketing_opt_in": "opt_in",
        "do_not_contact": "dnc",
        "deceased": "deceased",
        "ad_personalization": "ad",
    }
    return ProjectConfig.model_validate(
        {
            "sources": {"contacts": {"path": "contacts.parquet", "id": "contact_id"}},
            "identity": {
                "external_id": "contact_id",
                "email": "email",
                "phone": "phone",
                "first_name": "first_name",
                "last_name": "last_name",
                "zip": "zip",
                "country": "country",
            },
            "consent": consent,
            "destinations": {"file": {"kind": "file", "path": "exports"}},
        }
    )


def person(i: int, *, opt_in: bool = True, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {c: None for c in COLUMNS}
    row.update(contact_id=f"c{i}", country="US", opt_in=opt_in, dnc=False, deceased=False)
    row["ad"] = "granted"
    row.update(values)
    return row


def frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    schema = {c: pl.String for c in COLUMNS} | {
        "opt_in": pl.Boolean,
        "dnc": pl.Boolean,
        "deceased": pl.Boolean,
        "ad": pl.String,
    }
    return pl.DataFrame(rows, schema=schema)


def flagged(contacts: pl.DataFrame, cfg: ProjectConfig | None = None) -> set[str]:
    """Ids flagged when every contact is a candidate."""
    out = flag_duplicates_of_opt_outs(contacts, contacts.lazy(), cfg or config(), FLAG)
    assert out.height == contacts.height
    assert out.drop(FLAG).equals(contacts)
    return set(out.filter(FLAG).get_column("contact_id").to_list())


def reference(contacts: pl.DataFrame, candidates: pl.DataFrame) -> set[str]:
    """Normalize every record in full and join the exact keys: no coarse keys."""
    cfg = config()
    opted_out = ~pl.col("opt_in").fill_null(False) | pl.col("dnc").fill_null(False)
    opted_out = opted_out | pl.col("deceased").fill_null(False)
    ad = pl.col("ad").str.strip_chars().str.to_lowercase()
    opted_out = opted_out | ad.is_in(["denied", "deny", "false", "no", "n", "0", "f"]).fill_null(
        False
    )
    found: set[str] = set()
    for link in links_for(cfg, contacts.schema):

        def keys(lf: pl.LazyFrame, link: Any = link) -> pl.DataFrame:
            staged = normalized_layout(lf, link.identity, link.layout, keep=["contact_id"])
            return staged.select("contact_id", link.key().alias("k")).drop_nulls("k").collect()

        theirs = keys(contacts.lazy().filter(opted_out))
        mine = keys(candidates.lazy().filter(~opted_out))
        hit = mine.filter(pl.col("k").is_in(theirs.get_column("k").implode()))
        found |= set(hit.get_column("contact_id").to_list())
    return found


# ------------------------------------------------------------------ 1. the coarse invariant
def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


_local = st.text(alphabet="abcxyz.+-_0123", min_size=1, max_size=10)
_domain = st.sampled_from(["gmail.com", "googlemail.com", "clinic.org", "Mail.CLINIC.com"])
emails = st.one_of(
    st.builds(
        lambda loc, d, pad: f"{pad}{loc}@{d}{pad}",
        _local,
        _domain,
        st.sampled_from(["", " ", "\t"]),
    ),
    st.builds(lambda s: s.upper(), st.builds(lambda loc, d: f"{loc}@{d}", _local, _domain)),
    st.builds(lambda t: sha(t), st.text(max_size=5)),
    st.builds(lambda t: sha(t).upper(), st.text(max_size=5)),
    st.text(max_size=12),
)
_digits = st.text(alphabet="0123456789", min_size=0, max_size=17)
phones = st.one_of(
    st.builds(
        lambda d, p, s: p + s.join(d),
        _digits,
        st.sampled_from(["", "+", "00", "011", "0", "1"]),
        st.sampled_from(["", " ", "-", "."]),
    ),
    st.builds(
        lambda a, b, c: f"({a}) {b}-{c}",
        st.text("0123456789", min_size=3, max_size=3),
        st.text("0123456789", min_size=3, max_size=3),
        st.text("0123456789", min_size=4, max_size=4),
    ),
    st.builds(
        lambda d, x: f"{d} {x}",
        _digits,
        st.sampled_from(["x12", "ext. 7", "#99", "extension 123456"]),
    ),
    st.builds(lambda t: sha(t), st.text(max_size=5)),
    st.builds(lambda d: sha(d)[:0] + "9" * 64, st.just("")),  # a SHA-256 of only digits
    st.text(alphabet="0123456789 +-().x#/\u00a0\u0660", max_size=20),
    st.text(max_size=12),
)
_name_chars = "aAbBzZ éÉe\u0301\u0130\u212aß'-.  \t\u0300ñ"
names = st.one_of(st.text(alphabet=_name_chars, max_size=8), st.text(max_size=6))
zips = st.one_of(
    st.text(alphabet="0123456789- ", max_size=11),
    st.sampled_from(["12345", "12345-6789", " 12345 ", "123456789", "SW1A 1AA", "k1a 0b1", "1234"]),
    st.text(max_size=8),
)
countries = st.sampled_from(["US", "us", "GB", "Canada", "de", "IT", "Germany", None, "zz"])


def invariant_holds(rows: list[dict[str, Any]]) -> None:
    contacts = pl.DataFrame(rows, schema={c: pl.String for c in COLUMNS})
    for link in links_for(config(), contacts.schema):
        out = link.out
        raw = (
            link.stage(contacts, link.raw_fields(), out)
            .select("contact_id", pl.col(out).alias("g_raw"), pl.col(f"{out}_ok").alias("ok"))
            .collect()
        )
        norm = normalized_layout(contacts.lazy(), link.identity, link.layout, keep=["contact_id"])
        norm = (
            link.stage(norm.collect(), link.norm_fields(), out)
            .select("contact_id", pl.col(out).alias("g_norm"), link.key().alias("key"))
            .collect()
        )
        both = raw.join(norm, on="contact_id")
        # every row with a key either is unreliable or has g(raw) == g(normalized)
        broken = both.filter(
            pl.col("key").is_not_null()
            & pl.col("ok").fill_null(True)
            & pl.col("g_raw").ne_missing(pl.col("g_norm"))
        )
        assert broken.is_empty(), (link.name, broken.to_dicts()[:3])
        # a row with a key has a coarse key (the prefilter drops null ones)
        assert both.filter(pl.col("key").is_not_null() & pl.col("g_norm").is_null()).is_empty()


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "email": emails,
                "phone": phones,
                "first_name": names,
                "last_name": names,
                "zip": zips,
                "country": countries,
            }
        ),
        min_size=1,
        max_size=25,
    )
)
def test_coarse_key_of_a_reliable_raw_value_is_that_of_its_normalized_value(rows: list) -> None:
    invariant_holds([{"contact_id": f"c{i}", **r} for i, r in enumerate(rows)])


def test_invariant_on_the_values_most_likely_to_break_it() -> None:
    rows = [
        {
            "email": " Pat.Lee+promo@GMAIL.com ",
            "phone": "+1 (425) 554-6755",
            "first_name": "Jose\u0301",
        },
        {"email": "p.a.t.lee@googlemail.com", "phone": "00 44 20 7946 0958", "country": "GB"},
        {
            "email": sha("x").upper(),
            "phone": sha("y"),
            "first_name": "\u212aim",
            "last_name": "\u0130nce",
        },
        {
            "email": "a@b",
            "phone": "011 44 20 7946 0958",
            "first_name": "Zoë",
            "last_name": "O'Brien",
        },
        {"phone": "0000000001234567", "zip": "12345-6789", "first_name": "ß", "last_name": "x"},
        {
            "phone": "425 554 6755 ext. 12",
            "zip": "SW1A 1AA",
            "country": "GB",
            "first_name": "a\u0300",
        },
        {
            "phone": "0123 456789",
            "country": "IT",
            "first_name": "Ab",
            "last_name": "Cd",
            "zip": "00144",
        },
        {
            "phone": "-4255546755",
            "first_name": "  Mary   Ann ",
            "last_name": "Smith-Jones",
            "zip": "02134",
        },
        # +tags: several, one in the domain, one with dots; a dot that hides a space
        {"email": "Pat.Lee+a.b+c@gmail.com", "zip": "\t02134", "first_name": "\u0958a"},
        {"email": "pat@mail+x.clinic.org", "phone": "(000) 425 554 6755", "zip": " 02134-"},
        {"email": ". pat@gmail.com", "phone": "+0 425 554 6755", "last_name": "\u1100\u1161"},
        {"email": "+@gmail.com", "phone": "()", "zip": "0213", "first_name": "\u212b"},
    ]
    invariant_holds(
        [
            {c: None for c in COLUMNS} | {"contact_id": f"c{i}", "country": "US"} | r
            for i, r in enumerate(rows)
        ]
    )


_blank_domains = st.sampled_from(
    ["gmail.com", "clinic.org", "Example.COM", "x.test", "localhost", "mail.invalid", "c", ""]
)
_blank_emails = st.one_of(
    st.builds(
        lambda pre, local, domain, post: f"{pre}{local}@{domain}{post}",
        st.sampled_from(["", " ", "\u2003"]),
        st.text(st.sampled_from("aZ.+-@ \u00e9\u0130\u017f"), max_size=6),
        _blank_domains,
        st.sampled_from(["", " ", ".", "\t"]),
    ),
    emails,
    st.none(),
)


_blank_phones = st.sampled_from(
    [None, "555-0101", "(425) 554-6755", "+1 425 554 6755", "1-425-554-6755", "(025) 554-6755",
     "425-554-6755 x12", "001 425 554 6755", "n/a", "425 554 675"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(_blank_emails, _blank_phones, st.sampled_from(["US", "IS", None, "Narnia"])))
)
def test_the_raw_prefilter_keeps_every_record_without_an_email_or_phone(rows: list) -> None:
    """The name + city + state rules look for records with neither an e-mail nor a phone
    the platforms receive among the rows a raw prefilter keeps (``_may_be_blank``): it
    must keep every row the exact test (``_blank_exact``) finds — a placeholder address,
    an ``@`` that makes no address, a gmail address Google empties, any case or spacing;
    a phone that is no number, or none in a country without a calling code."""
    from audiences.crm.linkage import _ROW, _blank_exact, _may_be_blank

    records = frame(
        [
            person(i, email=e, phone=ph, zip=None) | {"country": country}
            for i, (e, ph, country) in enumerate(rows)
        ]
    ).with_row_index(_ROW)
    links = links_for(config(), records.schema)
    kept = set(_may_be_blank(records, links).to_list())
    blank = set(_blank_exact(records, links).to_list())
    assert blank <= kept, [rows[i] for i in sorted(blank - kept)]


# ------------------------------------------------------------------ 2. against the reference
_people = [
    ("pat.lee", "4255546755", "Pat", "Lee", "98037"),
    ("jsmith", "2125550100", "John", "Smith", "10001"),
    ("maria.gomez", "3055550199", "María", "Gómez", "33101"),
    ("o.brien", "6175550111", "Sean", "O'Brien", "02134"),
]


@st.composite
def spelled(draw: Any, i: int) -> dict[str, Any]:
    """A record of one of few people, spelled one of many ways, with random consent."""
    local, phone, first, last, postal = draw(st.sampled_from(_people))
    domain = draw(st.sampled_from(["gmail.com", "googlemail.com", "clinic.org", "example.org"]))
    if draw(st.booleans()):
        local = local.replace(".", "") + draw(st.sampled_from(["", "+x", "+news"]))
    email = draw(
        st.sampled_from(
            [f"{local}@{domain}", f" {local.upper()}@{domain} ", None, sha(f"{local}@{domain}")]
        )
    )
    if draw(st.integers(0, 5)) == 0:
        # an `@` that makes no address (none to either platform, or to Google alone: a
        # gmail local part of dots and a +tag is empty once normalized)
        bad = [f"{local}@", f"{local}@{domain.split('.')[0]}", f"@{domain}", f"{local}@@{domain}"]
        email = draw(st.sampled_from([*bad, f".+{local}@{domain}", f" {local}@{domain}."]))
    a, b, c = phone[:3], phone[3:6], phone[6:]
    phone_value = draw(
        st.sampled_from(
            [
                phone,
                f"+1 {a} {b} {c}",
                f"({a}) {b}-{c}",
                f"1-{a}-{b}-{c}",
                f"001{phone}",
                f"011 1 {phone}",
                f"{a}.{b}.{c} x12",
                phone[-7:],
                None,
            ]
        )
    )
    first_value = draw(st.sampled_from([first, first.upper(), f" {first} ", None, "Other"]))
    decompose = draw(st.booleans())
    last_value = last.replace("í", "i\u0301").replace("ó", "o\u0301") if decompose else last
    zip_value = draw(st.sampled_from([postal, f"{postal}-1234", f" {postal}", "99999"]))
    return person(
        i,
        opt_in=draw(st.booleans()),
        dnc=draw(st.sampled_from([False, False, True, None])),
        deceased=draw(st.sampled_from([False, None])),
        ad=draw(st.sampled_from(["granted", "denied", None, "maybe"])),
        email=email,
        phone=phone_value,
        first_name=first_value,
        last_name=last_value,
        zip=zip_value,
        country=draw(st.sampled_from(["US", "us", None, "United States"])),
    )


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 30).flatmap(lambda n: st.tuples(*[spelled(i) for i in range(n)])), st.data())
def test_flags_equal_the_direct_computation(rows: tuple, data: Any) -> None:
    contacts = frame(list(rows))
    # candidates: a random subset of the CRM (a segment), in a random order
    picked = data.draw(st.lists(st.sampled_from(range(contacts.height)), unique=True))
    candidates = contacts[picked] if picked else contacts.clear()
    out = flag_duplicates_of_opt_outs(candidates, contacts.lazy(), config(), FLAG)
    assert out.drop(FLAG).equals(candidates)
    got = set(out.filter(FLAG).get_column("contact_id").to_list())
    assert got == reference(contacts, candidates)


def reference_persons(contacts: pl.DataFrame, cfg: ProjectConfig | None = None) -> list[str]:
    """Each record's person (the smallest contact id linked to it, transitively): records
    sharing an exact email or phone key; among those sharing a name + ZIP key, every
    record whose email and phone keys no other of them contradicts, joined to the first
    contradicted one by id (else the first); a record with none of those keys, to the
    first record of its name, city and state that has one (else the first) — every
    record normalized in full, no coarse keys."""
    parent = {cid: cid for cid in contacts.get_column("contact_id").to_list()}

    def find(x: str) -> str:
        while parent[x] != x:
            x = parent[x]
        return x

    def union(a: str, b: str) -> None:
        a, b = find(a), find(b)
        parent[max(a, b)] = min(a, b)

    keys: dict[str, dict[str, str]] = {}
    for link in person_links(cfg or config(), contacts.schema):
        staged = normalized_layout(contacts.lazy(), link.identity, link.layout, keep=["contact_id"])
        keyed = staged.select("contact_id", link.key().alias("k")).drop_nulls("k").collect()
        keys[link.name] = dict(keyed.iter_rows())
    for name in ("email", "phone"):
        first: dict[str, str] = {}
        for cid, k in keys.get(name, {}).items():
            union(cid, first.setdefault(k, cid))
    # a placeholder e-mail (reserved domain) links, but tells no one apart
    sent = {
        name: {
            cid: k
            for cid, k in keys.get(name, {}).items()
            if not k.endswith(tuple(f"{c}{d}" for d in RESERVED_EMAIL_DOMAINS for c in "@."))
        }
        for name in ("email", "phone")
    }
    groups: dict[str, list[str]] = {}
    for cid, k in keys.get("name_zip", {}).items():
        groups.setdefault(k, []).append(cid)
    for ids in groups.values():
        told = {
            cid: any(
                sent[s].get(cid) is not None
                and {sent[s][i] for i in ids if i in sent[s]} != {sent[s][cid]}
                for s in ("email", "phone")
            )
            for cid in ids
        }
        # each record no other contradicts joins the first contradicted one, else the first
        lead = min((i for i in ids if told[i]), default=min(ids))
        for cid in ids:
            if not told[cid]:
                union(cid, lead)
    # a record with no e-mail, phone or name + ZIP key joins the first of its name, city
    # and state that has one (else the first of them)
    places: dict[str, list[str]] = {}
    for cid, k in keys.get("name_place", {}).items():
        places.setdefault(k, []).append(cid)
    for ids in places.values():
        bare = [
            i
            for i in ids
            if all(i not in m for m in (sent["email"], sent["phone"], keys.get("name_zip", {})))
        ]
        if not bare:
            continue
        lead = min((i for i in ids if i not in bare), default=min(ids))
        for cid in bare:
            union(cid, lead)
    return [find(cid) for cid in contacts.get_column("contact_id").to_list()]


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 30).flatmap(lambda n: st.tuples(*[spelled(i) for i in range(n)])))
def test_person_keys_equal_the_direct_computation(rows: tuple) -> None:
    # person_keys normalizes only the records whose coarse key another record shares
    contacts = frame(list(rows))
    assert person_keys(contacts, config(), by="contact_id").to_list() == reference_persons(contacts)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 30).flatmap(lambda n: st.tuples(*[spelled(i) for i in range(n)])), st.data())
def test_keys_kept_by_the_flag_give_the_gate_the_same_people(rows: tuple, data: Any) -> None:
    """The flag keys every candidate for the people's links and keeps the keys (``memo``);
    person_keys then takes them instead of keying again: the flags and the people are the
    direct computation's, and the people's links were keyed once."""
    contacts = frame(list(rows))
    picked = data.draw(st.lists(st.sampled_from(range(contacts.height)), unique=True))
    candidates = contacts[picked] if picked else contacts.clear()
    memo: CoarseMemo = {}
    out = flag_duplicates_of_opt_outs(candidates, contacts.lazy(), config(), FLAG, memo=memo)
    assert set(out.filter(FLAG).get_column("contact_id").to_list()) == reference(
        contacts, candidates
    )
    if candidates.is_empty():
        return
    # every link the people key (the memo is by the link's repr: Link(name='email', ...))
    assert sorted(key.split("'")[1] for key in memo) == ["email", "name_zip", "phone"]
    computed: list[str] = []
    real = linkage._coarse_keys

    def counted(frame: pl.DataFrame, links: Any) -> dict[str, pl.DataFrame]:
        computed.extend(link.name for link in links)
        return real(frame, links)

    linkage._coarse_keys = counted
    try:
        got = person_keys(out, config(), by="contact_id", memo=memo).to_list()
    finally:
        linkage._coarse_keys = real
    assert got == reference_persons(candidates)
    assert not computed  # nothing keyed again


def test_keys_of_other_rows_are_never_taken() -> None:
    """A memo is taken only for rows equal to the ones it was computed from: the same
    records with one e-mail changed (or in another order) are keyed again, and the people
    are those of the records given, not of the memo's."""
    a = person(1, email="sam@clinic.org", phone=None)
    b = person(2, email="pat@clinic.org", phone=None)
    records = frame([a, b])
    memo: CoarseMemo = {}
    assert person_keys(records, config(), by="contact_id", memo=memo).to_list() == ["c1", "c2"]
    # the attack: the second record now shares the first's e-mail, the memo says it did not
    changed = frame([a, {**b, "email": "SAM@clinic.org"}])
    assert person_keys(changed, config(), by="contact_id", memo=memo).to_list() == ["c1", "c1"]
    swapped = frame([{**b, "email": "SAM@clinic.org"}, a])
    assert person_keys(swapped, config(), by="contact_id", memo=memo).to_list() == ["c1", "c1"]
    assert person_keys(records, config(), by="contact_id", memo=memo).to_list() == ["c1", "c2"]


# (city, state) spellings of a few places; the full state name and the accented city are
# normalized in full, the rest keyed from the raw values
_PLACES = [
    ("New York", "NY"),
    (" new york", "New York"),
    ("NEW-YORK", "n.y."),
    ("Albany", "ny"),
    ("Montréal", "QC"),
    ("Montre\u0301al", "qc"),
    (None, "NY"),
    ("Albany", None),
]


@st.composite
def placed(draw: Any, i: int) -> dict[str, Any]:
    """A :func:`spelled` record with a city and state, its ZIP often missing (people
    without an e-mail, phone or ZIP are linked by name, city and state alone)."""
    record = draw(spelled(i))
    record["city"], record["state"] = draw(st.sampled_from(_PLACES))
    for column in ("email", "phone", "zip"):
        if draw(st.integers(0, 2)) == 0:
            record[column] = None
    return record


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 30).flatmap(lambda n: st.tuples(*[placed(i) for i in range(n)])))
def test_person_keys_with_city_and_state_equal_the_direct_computation(rows: tuple) -> None:
    base = config()
    identity = base.identity.model_copy(update={"city": "city", "state": "state"})
    cfg = base.model_copy(update={"identity": identity})
    contacts = pl.DataFrame(
        list(rows),
        schema=frame([]).schema | {"city": pl.String, "state": pl.String},
    )
    got = person_keys(contacts, cfg, by="contact_id").to_list()
    assert got == reference_persons(contacts, cfg)


def reference_placed(
    contacts: pl.DataFrame, candidates: pl.DataFrame, cfg: ProjectConfig
) -> set[str]:
    """:func:`reference` with a name, city and state too, followed only to opted-out
    records with neither an e-mail (a placeholder is none) nor a phone, as the platforms
    receive them — every record normalized in full."""
    opted_out = ~pl.col("opt_in").fill_null(False) | pl.col("dnc").fill_null(False)
    opted_out = opted_out | pl.col("deceased").fill_null(False)
    ad = pl.col("ad").str.strip_chars().str.to_lowercase()
    opted_out = opted_out | ad.is_in(["denied", "deny", "false", "no", "n", "0", "f"]).fill_null(
        False
    )
    links = {link.name: link for link in links_for(cfg, contacts.schema)}

    def keys(lf: pl.LazyFrame, name: str) -> pl.DataFrame:
        link = links[name]
        staged = normalized_layout(lf, link.identity, link.layout, keep=["contact_id"])
        return staged.select("contact_id", link.key().alias("k")).drop_nulls("k").collect()

    out = contacts.lazy().filter(opted_out)
    placeholder = tuple(f"{c}{d}" for d in RESERVED_EMAIL_DOMAINS for c in "@.")
    sent = {cid for cid, k in keys(out, "email").iter_rows() if not k.endswith(placeholder)}
    has = sent | set(keys(out, "phone").get_column("contact_id"))
    found: set[str] = set()
    for name in links:
        theirs = keys(out, name)
        if name == "name_place":
            theirs = theirs.filter(~pl.col("contact_id").is_in(list(has)))
        mine = keys(candidates.lazy().filter(~opted_out), name)
        hit = mine.filter(pl.col("k").is_in(theirs.get_column("k").implode()))
        found |= set(hit.get_column("contact_id").to_list())
    return found


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 30).flatmap(lambda n: st.tuples(*[placed(i) for i in range(n)])), st.data())
def test_opt_outs_known_by_name_and_place_equal_the_direct_computation(
    rows: tuple, data: Any
) -> None:
    """CRM-wide, a name with city and state links a candidate to an opted-out record with
    no e-mail or phone the platforms receive — a placeholder e-mail, or a number of seven
    digits or more that is no phone, included."""
    base = config()
    identity = base.identity.model_copy(update={"city": "city", "state": "state"})
    cfg = base.model_copy(update={"identity": identity})
    contacts = pl.DataFrame(
        list(rows), schema=frame([]).schema | {"city": pl.String, "state": pl.String}
    )
    picked = data.draw(st.lists(st.sampled_from(range(contacts.height)), unique=True))
    candidates = contacts[picked] if picked else contacts.clear()
    out = flag_duplicates_of_opt_outs(candidates, contacts.lazy(), cfg, FLAG)
    got = set(out.filter(FLAG).get_column("contact_id").to_list())
    assert got == reference_placed(contacts, candidates, cfg)


# ------------------------------------------------------------------ 3. by hand
@pytest.mark.parametrize(
    ("opted_out", "other"),
    [
        ({"email": "pat.lee+promo@gmail.com"}, {"email": " PatLee@GMAIL.COM"}),
        ({"email": "pat.lee@clinic.org"}, {"email": "Pat.Lee@clinic.org "}),
        ({"email": sha("pat@clinic.org")}, {"email": sha("pat@clinic.org").upper()}),
        # a placeholder address is never uploaded, but two records holding it may be
        # one person's: it still links them
        ({"email": "pat.lee@example.com"}, {"email": " PAT.LEE@Example.com"}),
        ({"phone": "(425) 554-6755"}, {"phone": "+1 425 554 6755"}),
        ({"phone": "425.554.6755"}, {"phone": "0014255546755"}),
        ({"phone": "1-425-554-6755"}, {"phone": "011 1 425 554 6755"}),
        ({"phone": "425-554-6755 ext. 12"}, {"phone": "4255546755"}),
        ({"phone": "020 7946 0958", "country": "GB"}, {"phone": "+44 20 7946 0958"}),
        ({"phone": sha("+14255546755")}, {"phone": sha("+14255546755")}),
        (
            {"first_name": "José", "last_name": "Núñez", "zip": "33101"},
            {"first_name": "JOSE\u0301", "last_name": "Nu\u0301n\u0303ez", "zip": "33101-0001"},
        ),
        (
            {"first_name": "Mary Ann", "last_name": "Smith", "zip": "02134"},
            {"first_name": " mary   ann", "last_name": "SMITH", "zip": " 02134 "},
        ),
        (
            {"first_name": "\u212aim", "last_name": "Lee", "zip": "98037"},
            {"first_name": "Kim", "last_name": "lee", "zip": "98037"},
        ),
    ],
    ids=[
        "gmail-dots-and-tag",
        "case-and-space",
        "already-hashed-email",
        "placeholder-email",
        "phone-punctuation",
        "phone-00-prefix",
        "phone-011-prefix",
        "phone-extension",
        "phone-trunk-zero",
        "already-hashed-phone",
        "decomposed-accents-and-zip4",
        "name-whitespace",
        "kelvin-sign",
    ],
)
def test_the_other_record_of_an_opted_out_person_is_flagged(
    opted_out: dict[str, Any], other: dict[str, Any]
) -> None:
    contacts = frame([person(1, opt_in=False, **opted_out), person(2, **other), person(3)])
    assert flagged(contacts) == {"c2"}


@pytest.mark.parametrize(
    ("opted_out", "other"),
    [
        ({"email": "pat.lee@clinic.org"}, {"email": "patlee@clinic.org"}),  # dots count off gmail
        ({"email": "pat+x@clinic.org"}, {"email": "pat@clinic.org"}),
        ({"email": "pat@gmail.com"}, {"email": "pat@clinic.org"}),
        ({"phone": "425 554 6755"}, {"phone": "425 554 6756"}),
        ({"phone": "425 554 6755"}, {"phone": "+44 425 554 6755"}),  # same digits, other country
        (
            {"first_name": "Pat", "last_name": "Lee", "zip": "98037"},
            {"first_name": "Pat", "last_name": "Lee", "zip": "98038"},
        ),
        (
            {"first_name": "Pat", "last_name": "Lee", "zip": "98037"},
            {"first_name": "Pat", "last_name": "Lee", "zip": "98037", "country": "CA"},
        ),
        ({"phone": "not a number"}, {"phone": "not a number"}),  # invalid: no key at all
        ({"email": ""}, {"email": ""}),
    ],
    ids=[
        "dots-off-gmail",
        "tag-off-gmail",
        "other-domain",
        "other-number",
        "other-country-code",
        "other-zip",
        "other-country",
        "invalid-phone",
        "empty-email",
    ],
)
def test_records_of_different_people_are_not_linked(
    opted_out: dict[str, Any], other: dict[str, Any]
) -> None:
    contacts = frame([person(1, opt_in=False, **opted_out), person(2, **other)])
    assert flagged(contacts) == set()


@pytest.mark.parametrize(
    "opt_out",
    [
        {"opt_in": False},
        {"opt_in": None},
        {"dnc": True},
        {"deceased": True},
        {"ad": "DENIED"},
        {"ad": " no "},
    ],
)
def test_every_kind_of_opt_out_links(opt_out: dict[str, Any]) -> None:
    contacts = frame([person(1, phone="425 554 6755") | opt_out, person(2, phone="+14255546755")])
    assert flagged(contacts) == {"c2"}


def test_opted_out_candidates_are_left_to_their_own_reason() -> None:
    contacts = frame(
        [
            person(1, opt_in=False, phone="425 554 6755"),
            person(2, dnc=True, phone="+14255546755"),
            person(3, phone="4255546755"),
        ]
    )
    assert flagged(contacts) == {"c3"}


def test_two_opted_in_records_of_one_person_stay() -> None:
    contacts = frame([person(1, email="pat.lee@gmail.com"), person(2, email="patlee@gmail.com")])
    assert flagged(contacts) == set()


def test_unspecified_ad_consent_is_not_an_opt_out() -> None:
    contacts = frame([person(1, ad="maybe", phone="4255546755"), person(2, phone="4255546755")])
    assert flagged(contacts) == set()


def test_no_consent_columns_no_flags() -> None:
    contacts = frame([person(1, opt_in=False, phone="4255546755"), person(2, phone="4255546755")])
    cfg = config(marketing_opt_in=None)
    assert flagged(contacts, cfg) == set()


def test_candidates_outside_the_crm_order_and_empty_frames() -> None:
    contacts = frame([person(i, opt_in=i % 2 == 0, phone=f"425555{i:04d}") for i in range(40)])
    contacts = contacts.with_columns(pl.col("phone").str.replace(r"^(.*)$", "$1"))
    dupes = frame([person(100 + i, phone=f"+1 425 555 {i:04d}") for i in range(40)])
    crm = pl.concat([contacts, dupes])
    candidates = dupes.reverse()
    out = flag_duplicates_of_opt_outs(candidates, crm.lazy(), config(), FLAG)
    want = {f"c{100 + i}" for i in range(40) if i % 2 == 1}
    assert set(out.filter(FLAG).get_column("contact_id").to_list()) == want
    assert out.drop(FLAG).equals(candidates)
    empty = flag_duplicates_of_opt_outs(candidates.clear(), crm.lazy(), config(), FLAG)
    assert empty.is_empty() and FLAG in empty.columns


def test_short_numbers_are_normalized_in_full() -> None:
    # Seven digits with a calling code prepended: the tail of the normalized number is not
    # the tail of the raw digits, so the stage must call it unreliable.
    contacts = frame(
        [
            person(1, opt_in=False, phone="1234567", country="DE"),
            person(2, phone="+49 1234567", country="DE"),
        ]
    )
    assert PHONE_TAIL > 7
    assert flagged(contacts) == {"c2"}


def test_the_opt_out_index_is_shared_per_export_and_keyed_by_the_consent_mapping() -> None:
    contacts = frame(
        [
            person(1, opt_in=False, phone="425 554 6755"),
            person(2, dnc=True, email="pat@clinic.org"),
            person(3, phone="+1 425 554 6755"),
            person(4, email=" PAT@clinic.org"),
        ]
    )
    cache: dict[str, Any] = {}

    def ids(cfg: ProjectConfig, rows: list[int]) -> set[str]:
        out = flag_duplicates_of_opt_outs(contacts[rows], contacts.lazy(), cfg, FLAG, cache=cache)
        return set(out.filter(FLAG).get_column("contact_id").to_list())

    assert ids(config(), [2, 3]) == {"c3", "c4"}
    assert len(cache) == 1
    assert ids(config(), [3]) == {"c4"}  # another segment, the same index
    assert len(cache) == 1
    # without the do-not-contact column, record 2 is no opt-out: a new index, fewer links
    no_dnc = config(marketing_opt_in="opt_in", deceased="deceased", ad_personalization="ad")
    assert ids(no_dnc, [2, 3]) == {"c3"}
    assert len(cache) == 2


def _failing_late(rows: int) -> pl.LazyFrame:
    """Contacts whose ``zip`` fails a strict cast only in the last row: a query that
    breaks after its first batches were read (a bad value, an unreadable file)."""
    contacts = frame(
        [person(i, opt_in=i % 2 == 0, email=f"p{i}@x.org", zip="10001") for i in range(rows)]
    )
    zips = ["10001"] * (rows - 1) + ["not-a-number"]
    return (
        contacts.lazy()
        .with_columns(pl.Series("zip", zips).alias("zip"))
        .with_columns(pl.col("zip").cast(pl.Int64, strict=True).cast(pl.String))
    )


def test_a_query_failing_part_way_raises_and_never_yields_a_partial_index(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The opt-out index and the read-back stream the contacts in batches. A query that
    fails after some batches must raise: an index over part of the CRM would miss the
    opt-outs of the rest and pass for complete (polars' ``collect_batches`` ends such an
    iteration as if the data had ended)."""
    import audiences.crm.linkage as linkage

    monkeypatch.setattr(linkage, "_INDEX_CHUNK", 100)
    monkeypatch.setattr(linkage, "_READ_CHUNK", 100)
    contacts = _failing_late(2_000)
    with pytest.raises(pl.exceptions.PolarsError):
        linkage.compute_opt_out_index(contacts, config(), linkage.UNKEYED)
    positions = pl.Series([0, 5, 1_500], dtype=pl.UInt32)
    with pytest.raises(pl.exceptions.PolarsError):
        linkage._records_at(contacts, positions, ["email", "zip"])
    # the same frame without the bad value: whole, in order
    good = contacts.with_columns(pl.lit("10001").alias("zip"))
    index = linkage.compute_opt_out_index(good, config(), linkage.UNKEYED)
    assert index.get_column("__link_pos").to_list() == list(range(1, 2_000, 2))
    rows = linkage._records_at(good, positions, ["email", "zip"])
    assert rows.get_column("email").to_list() == ["p0@x.org", "p5@x.org", "p1500@x.org"]


def test_a_collision_of_the_index_keys_sends_a_record_to_the_exact_comparison_only() -> None:
    """The index keeps 32 bits of each keyed coarse key: two different mailboxes whose keys
    collide (found here by brute force, without the secret seeds an index in the state
    folder uses) meet in the index, and the exact comparison tells them apart."""
    from audiences.crm import linkage

    emails = pl.DataFrame({"email": [f"u{i}@clinic.org" for i in range(300_000)]})
    link = next(k for k in links_for(config(), frame([person(0)]).schema) if k.name == "email")
    staged = linkage._email_stage(emails, link.raw_fields(), "g").collect()
    keyed = staged.with_columns(linkage._keyed(pl.col("g"), linkage.UNKEYED).alias("k"))
    collided = keyed.filter(pl.col("k").is_duplicated()).sort("k", "email")
    assert collided.height >= 2  # about 10 collide among 300k (n^2 / 2^33)
    a, b = collided.row(0, named=True), collided.row(1, named=True)
    assert a["k"] == b["k"] and a["g"] != b["g"]
    contacts = frame(
        [
            person(1, opt_in=False, email=a["email"]),
            person(2, email=b["email"]),  # the colliding mailbox: another person
            person(3, email=a["email"].upper()),  # the opted-out mailbox: a duplicate
        ]
    )
    assert flagged(contacts) == {"c3"}


# ------------------------------------------------------------------ name, city and state
def placed_config() -> ProjectConfig:
    base = config()
    identity = base.identity.model_copy(update={"city": "city", "state": "state"})
    return base.model_copy(update={"identity": identity})


def placed_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=frame([]).schema | {"city": pl.String, "state": pl.String})


def pat(i: int, **values: Any) -> dict[str, Any]:
    """Pat Lee of Albany, NY, without a ZIP (the name and place are the only common key)."""
    base = {"first_name": "Pat", "last_name": "Lee", "city": "Albany", "state": "NY", "zip": None}
    return person(i, **(base | values))


@pytest.mark.parametrize(
    "opted_out",
    [
        {},  # nothing but the name and place
        {"email": "n/a", "phone": "none"},  # placeholders the normalization empties
        {"email": "pat@noemail.test"},  # a placeholder address: never sent
        {"city": " ALBANY", "state": "New York", "zip": "12207"},  # spelled otherwise
        {"phone": "555-0101"},  # seven digits, but no US number: no phone to Meta
        {"phone": "518-555-010"},  # nine
        {"email": "pat@"},  # an `@` that makes no address: no e-mail to anybody
        {"email": "pat.lee@clinic"},  # no top-level domain
        {"email": "@clinic.org", "phone": "555-0101"},  # no local part, no phone
    ],
    ids=[
        "bare",
        "placeholders",
        "placeholder-email",
        "spelling",
        "short-phone",
        "nine-digits",
        "at-sign-alone",
        "no-tld",
        "no-local-part",
    ],
)
def test_an_opt_out_on_a_record_known_by_name_city_and_state_holds_crm_wide(
    opted_out: dict[str, Any],
) -> None:
    """The person's older record holds only their name, city and state, and opted out; the
    newer one has an e-mail, a phone and a ZIP. Meta matches the newer row to the user the
    older names: the opt-out is theirs (the name and ZIP link cannot see it: no ZIP)."""
    contacts = placed_frame(
        [
            pat(1, opt_in=False, **opted_out),
            pat(2, email="pat@clinic.org", phone="(518) 555-0101", zip="12210"),
            pat(3, first_name="Sam", email="sam@clinic.org"),
        ]
    )
    assert flagged(contacts, placed_config()) == {"c2"}


def test_a_namesake_with_an_email_of_their_own_is_not_flagged() -> None:
    """The edge: an opted-out Pat Lee of Albany with an e-mail (or a phone) of their own is
    another person to the platform than a Pat Lee with another e-mail — namesakes of one
    city are many; only a record with neither is matched on the name alone."""
    contacts = placed_frame(
        [
            pat(1, opt_in=False, email="pat.senior@clinic.org"),
            pat(2, opt_in=False, phone="(518) 555-0199"),
            pat(3, email="pat@clinic.org", phone="(518) 555-0101"),
        ]
    )
    assert flagged(contacts, placed_config()) == set()


def test_a_request_on_a_record_known_by_name_city_and_state_holds_crm_wide() -> None:
    """The same for a jurisdiction's request flags (``flag_linked_records``)."""
    from audiences.crm.linkage import flag_linked_records

    contacts = placed_frame([pat(1), pat(2, email="pat@clinic.org"), pat(3, first_name="Sam")])
    flags = {"asked": pl.col("contact_id") == "c1"}
    out = flag_linked_records(contacts, contacts.lazy(), placed_config(), flags)
    assert out.filter("asked").get_column("contact_id").to_list() == ["c1", "c2"]


def test_the_index_keys_name_city_and_state_only_for_bare_records() -> None:
    """The edge: a batch with no record that may lack both e-mail and phone keys no name
    and place at all (and a bare one is keyed, in its own row)."""
    from audiences.crm.linkage import UNKEYED, compute_opt_out_index

    column = "__link_name_place"
    with_email = placed_frame([pat(1, opt_in=False, email="pat@clinic.org"), pat(2)])
    index = compute_opt_out_index(with_email.lazy(), placed_config(), UNKEYED)
    assert index.height == 1 and index.get_column(column).null_count() == 1
    bare = placed_frame([pat(1, opt_in=False, email="pat@clinic.org"), pat(2, opt_in=False)])
    index = compute_opt_out_index(bare.lazy(), placed_config(), UNKEYED).sort("__link_pos")
    assert index.get_column(column).is_null().to_list() == [True, False]
