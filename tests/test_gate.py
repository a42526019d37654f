"""The policy gate end to end on small in-memory frames, including attacks on Release."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import pickle
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from conftest import frozen_clock

from audiences.core.config import ProjectConfig
from audiences.core.errors import InternalError
from audiences.core.state import connect, transaction
from audiences.crm.identifiers import member_key
from audiences.segments import parse_segment
from policies import release as release_module
from policies.difference import read_membership
from policies.gate import GateInput, GateOutcome, evaluate, record
from policies.pack import load_pack
from policies.release import Release, require_release

AS_OF = dt.date(2025, 6, 1)


@pytest.fixture(scope="module", autouse=True)
def _stopped_clock() -> Iterator[None]:
    """The sample data is fixed on AS_OF: the wall clock stops there (in this process)."""
    with frozen_clock(AS_OF):
        yield


SALT = b"test-salt-for-member-keys-000000"


def make_config(root: Path, *, pack: str = "baseline", **extra: Any) -> ProjectConfig:
    data: dict[str, Any] = {
        "sources": {
            "contacts": {"path": "contacts.csv"},
            "events": {
                "path": "events.csv",
                "sensitive_types": ["portal_login"],
                "sensitive_columns": ["department"],
            },
        },
        "identity": {
            "external_id": "contact_id",
            "email": "email",
            "phone": "phone",
            "zip": "zip",
            "birth_date": "birth_date",
            "gender": "sex",
        },
        "columns": {"sensitive": ["diagnosis_codes"]},
        "consent": {
            "marketing_opt_in": "opt_in",
            "do_not_contact": "dnc",
            "deceased": "deceased",
            "hipaa_authorization_date": "auth",
            "hipaa_authorization_expires": "auth_expires",
            "hipaa_authorization_revoked": "auth_revoked",
            "ad_personalization": "ad_pers",
        },
        "destinations": {
            "meta": {"kind": "meta", "ad_account_id": "act_42"},
            "meta_again": {"kind": "meta", "ad_account_id": "act_42"},
            "gads": {"kind": "google_ads", "customer_id": "123-456-7890"},
            "file": {"kind": "file", "path": "exports"},
        },
        "policy": {"pack": pack},
    }
    data.update(extra)
    return ProjectConfig.model_validate(data).model_copy(update={"root": root})


def people(n: int, start: int = 0, **columns: Any) -> pl.DataFrame:
    ids = [f"C{i:09d}" for i in range(start, start + n)]
    base: dict[str, Any] = {
        "contact_id": ids,
        "email": [f"Person.{i}@clinic.com " for i in range(start, start + n)],
        "phone": [f"(212) 555-{i % 10000:04d}" for i in range(start, start + n)],
        "zip": "10001",
        "birth_date": dt.date(1980, 3, 1),
        "sex": "F",
        "opt_in": True,
        "dnc": False,
        "deceased": False,
        "auth": dt.date(2024, 1, 1),
        "auth_expires": None,
        "auth_revoked": None,
        "ad_pers": "granted",
        "diagnosis_codes": ("E11.9",),
        "age": 45,
    }
    base.update(columns)
    frame = pl.DataFrame({"contact_id": ids})
    for name, value in base.items():
        if name == "contact_id":
            continue
        if not isinstance(value, list):
            value = [list(value) if isinstance(value, tuple) else value] * n
        frame = frame.with_columns(pl.Series(name, value, strict=False))
    return frame.with_columns(
        pl.col("age").cast(pl.Int32),
        pl.col("auth", "auth_expires", "auth_revoked").cast(pl.Date),
        member_key("contact_id", SALT),
    )


def segment(text: str) -> Any:
    return parse_segment(text)


NEWSLETTER = segment("name: newsletter\ndestinations: [meta]\nwhere:\n  zip: {eq: '10001'}\n")
DIABETES = segment(
    "name: diabetes-outreach\ndescription: Type 2 diabetes patients\n"
    "destinations: [meta]\nwhere:\n  diagnosis_codes: {contains: E11.9}\n"
)


@pytest.fixture
def project(tmp_path: Path) -> dict[str, Any]:
    state_dir = tmp_path / ".audiences"
    conn = connect(state_dir / "state.db")
    yield {"root": tmp_path, "state_dir": state_dir, "conn": conn}
    conn.close()


def run(
    project: dict[str, Any],
    seg: Any,
    frame: pl.DataFrame,
    destinations: list[str],
    *,
    pack: str = "baseline",
    config: ProjectConfig | None = None,
    as_of: dt.date = AS_OF,
    keep: bool = False,
) -> GateOutcome:
    config = config or make_config(project["root"], pack=pack)
    build_id = f"b-{seg.name}-{frame.height}-{len(destinations)}-{id(frame)}"
    with transaction(project["conn"]):
        project["conn"].execute(
            "INSERT OR IGNORE INTO builds(build_id, segment, segment_digest, as_of, started_at, "
            "status, actor) VALUES (?,?,?,?,?,?,?)",
            (build_id, seg.name, seg.digest, as_of.isoformat(), "t", "running", "tester"),
        )
    outcome = evaluate(
        GateInput(
            build_id=build_id,
            segment=seg,
            config=config,
            pack=load_pack(config),
            candidates=frame,
            destinations=destinations,
            as_of=as_of,
            conn=project["conn"],
            state_dir=project["state_dir"],
            actor="tester",
        )
    )
    if keep and not outcome.blocked:
        record(outcome, project["conn"])
    return outcome


def verdict(outcome: GateOutcome, rule_id: str, destination: str | None = None) -> Any:
    return next(
        v for v in outcome.verdicts if v.id == rule_id and v.destination in (None, destination)
    )


# ---------------------------------------------------------------------------------------
# Attacks and the headline scenarios


def test_two_segments_differing_by_three_people_second_is_blocked_naming_the_first(project):
    first = run(project, NEWSLETTER, people(300), ["meta"], keep=True)
    assert not first.blocked
    first_id = first.releases["meta"].release_id
    other = segment("name: newsletter-plus\ndestinations: [meta]\nwhere:\n  zip: {in: ['10001']}\n")
    second = run(project, other, people(303), ["meta"])
    assert second.blocked
    v = verdict(second, "difference", "meta")
    assert v.status == "fail"
    assert first_id in v.detail and "newsletter" in v.detail
    assert v.checks[0]["release_id"] == first_id
    assert (v.checks[0]["only_new"], v.checks[0]["only_old"]) == (3, 0)
    assert second.releases == {}
    assert any(r.startswith("difference [meta]:") for r in second.block_reasons)


def test_other_destination_on_same_account_collides_too(project):
    run(project, NEWSLETTER, people(300), ["meta"], keep=True)
    again = run(project, NEWSLETTER, people(298), ["meta_again"])
    assert again.blocked  # another audience (destination) in the same ad account


def test_narrow_segment_is_blocked_by_k(project):
    narrow = segment(
        "name: narrow\ndestinations: [meta]\nwhere:\n  all:\n    - age: {eq: 43}\n"
        "    - zip: {eq: '10001'}\n    - sex: {eq: F}\n"
    )
    outcome = run(project, narrow, people(4, age=43), ["meta"])
    assert outcome.blocked
    v = verdict(outcome, "min-size", "meta")
    assert v.evidence["members"] == 4 and v.evidence["threshold"] == 100
    assert outcome.releases == {}


def test_diagnosis_segment_releases_only_authorized_members(project):
    auth = [dt.date(2024, 1, 1)] * 150 + [None] * 50
    outcome = run(project, DIABETES, people(200, auth=auth), ["meta"], pack="hipaa-marketing")
    assert not outcome.blocked
    v = verdict(outcome, "phi-authorization")
    assert v.evidence["lacking_authorization"] == 50 and v.evidence["excluded"] == 50
    released = outcome.releases["meta"]
    assert released.members.height == 150
    authorized_keys = people(150).get_column("member_key").sort()
    assert released.members.get_column("member_key").sort().equals(authorized_keys)


def test_diagnosis_segment_blocked_when_pack_blocks_phi(project):
    outcome = run(project, DIABETES, people(200), ["meta"], pack="baseline")
    assert outcome.blocked
    assert verdict(outcome, "phi-authorization").status == "fail"


def test_event_based_phi_reaches_department_inside_event_filter(project):
    cardio = segment(
        "name: cardio\ndestinations: [meta]\nwhere:\n  event:\n    type: visit\n"
        "    where: {department: {eq: cardiology}}\n    within: 365d\n"
    )
    auth = [dt.date(2024, 1, 1)] * 120 + [None] * 30
    outcome = run(project, cardio, people(150, auth=auth), ["meta"], pack="hipaa-marketing")
    assert outcome.report["segment"]["event_columns"] == ["department"]
    assert outcome.releases["meta"].members.height == 120


def test_suppressed_person_already_pushed_is_absent_and_becomes_a_removal(project):
    root = project["root"]
    first = run(project, NEWSLETTER, people(200), ["meta"], keep=True)
    previous_keys = read_membership(
        project["state_dir"] / "releases" / f"{first.releases['meta'].release_id}.parquet"
    )
    (root / "optouts.csv").write_text("Email Address\n  PERSON.7@clinic.COM\n")
    config = make_config(
        root,
        policy={
            "pack": "baseline",
            "suppression": [{"path": "optouts.csv", "column": "Email Address", "kind": "email"}],
        },
    )
    second = run(project, NEWSLETTER, people(200), ["meta"], config=config)
    assert not second.blocked  # a mandatory removal is never held nor blocked
    assert verdict(second, "suppression").evidence["excluded"] == 1
    new = second.releases["meta"]
    suppressed_key = people(1, start=7).get_column("member_key")[0]
    new_keys = new.members.get_column("member_key").to_numpy()
    assert suppressed_key not in new_keys
    removals = np.setdiff1d(previous_keys, new_keys)
    assert removals.tolist() == [suppressed_key]
    assert new.excluded_keys.to_list() == [suppressed_key]
    assert new.hold_against is None and new.holds == 0
    check = verdict(second, "difference", "meta").checks[0]
    assert check["exempt_removals"] == 1 and check["only_old"] == 0


def test_google_ads_refuses_phi_derived_segment(project):
    outcome = run(project, DIABETES, people(200), ["gads", "meta"], pack="hipaa-marketing")
    assert outcome.blocked
    assert verdict(outcome, "google-health", "gads").status == "fail"
    assert verdict(outcome, "google-health", "meta").status == "pass"
    assert outcome.block_reasons == [verdict(outcome, "google-health", "gads").reason()]


def test_google_ads_release_has_layout_and_consent_columns(project):
    # people who denied ad personalization are in no ad audience (Customer Match also
    # refuses DENIED outright): 50 granted + 50 undecided are released
    pers = ["granted", "denied", None] * 50
    outcome = run(project, NEWSLETTER, people(150, ad_pers=pers), ["gads"])
    members = outcome.releases["gads"].members
    assert members.columns == [
        "member_key",
        "hashed_email",
        "hashed_phone_number",
        "hashed_first_name",
        "hashed_last_name",
        "country_code",
        "postal_code",
        "ad_user_data",
        "ad_personalization",
    ]
    assert sorted(members.get_column("ad_personalization").value_counts().rows()) == [
        ("GRANTED", 50),
        ("UNSPECIFIED", 50),
    ]
    assert verdict(outcome, "consent").evidence["ad_personalization_denied"] == 50
    assert set(members.get_column("ad_user_data")) == {"UNSPECIFIED"}
    assert outcome.releases["gads"].account == "1234567890"


@pytest.mark.parametrize(
    ("first", "second", "sent_as"),
    [
        ("granted", "denied", None),  # the attack: GRANTED on the older record
        ("denied", "granted", None),
        (None, "denied", None),  # a record that says nothing does not outweigh a refusal
        ("granted", None, "GRANTED"),  # nor a consent
        ("granted", "maybe", "UNSPECIFIED"),  # an answer that is no word is not a consent
        ("granted", "granted", "GRANTED"),
    ],
)
@pytest.mark.parametrize("signal", ["ad_personalization", "ad_user_data"])
@pytest.mark.parametrize("refusing_record_opted_in", [True, False])
def test_a_person_whose_records_disagree_is_sent_with_the_strictest_signal(
    project, first, second, sent_as, signal, refusing_record_opted_in
):
    # 120 people with one record each, then person 0 again under a new id (a second
    # registration: the same email, the newer record): the two records are one person,
    # released once. Which record comes first by CRM id must not decide their consent,
    # nor whether a filter dropped the refusing record for another reason (no opt-in),
    # with the CRM-wide linkage of opt-outs absent, as here.
    config = make_config(project["root"])
    consent = config.consent.model_copy(update={"ad_user_data": "ad_data"})
    config = config.model_copy(update={"consent": consent})
    crowd = people(120, ad_pers="granted", ad_data="granted")
    again = (
        people(1, start=0, ad_pers="granted", ad_data="granted")
        .with_columns(pl.lit("C900000000").alias("contact_id"))
        .with_columns(member_key("contact_id", SALT))
    )
    column = {"ad_personalization": "ad_pers", "ad_user_data": "ad_data"}[signal]
    answers = [first, *["granted"] * 119, second]
    opt_in = [True] * 121
    if not refusing_record_opted_in and "denied" in (first, second):
        opt_in[0 if first == "denied" else 120] = False
    frame = pl.concat([crowd, again]).with_columns(
        pl.Series(column, answers), pl.Series("opt_in", opt_in)
    )
    outcome = run(project, NEWSLETTER, frame, ["gads"], config=config)
    members = outcome.releases["gads"].members
    key0 = crowd.get_column("member_key")[0]
    person0 = members.filter(pl.col("member_key") == key0)
    if sent_as is None:
        assert person0.height == 0, "a DENIED on one record of a person reached Google"
        assert members.height == 119
    else:
        assert person0.get_column(signal).to_list() == [sent_as]
        assert members.height == 120


def test_file_release_carries_both_layouts_prefixed(project):
    outcome = run(project, NEWSLETTER, people(120), ["file"])
    cols = outcome.releases["file"].members.columns
    assert cols[0] == "member_key"
    assert "meta_EMAIL" in cols and "google_ads_hashed_email" in cols
    assert outcome.releases["file"].account == "local"  # every file destination: one account


def test_nothing_sensitive_in_the_opaque_name(project):
    seg = segment(
        "name: oncology-breast-cancer-bed\ndescription: chemo patients face 10001 e11\n"
        "destinations: [meta]\nwhere:\n  zip: {in: ['10001', '10002']}\n"
    )
    outcome = run(project, seg, people(150), ["meta"])
    rel = outcome.releases["meta"]
    name = rel.opaque_name
    assert name.startswith("aud-") and len(name) == 12
    for word in ("oncology", "breast", "cancer", "bed", "chemo", "face", "100", "e11"):
        assert word not in name
    assert verdict(outcome, "opaque-name", "meta").evidence["words_found"] == 0
    # every text that would be sent as a name/description is the opaque code
    assert outcome.report["releases"][0]["opaque_name"] == name


def test_opaque_name_that_cannot_avoid_segment_words_blocks(project):
    every_hex_triplet = " ".join(f"{i:03x}" for i in range(4096))
    seg = parse_segment(
        f"name: x\ndescription: '{every_hex_triplet}'\ndestinations: [meta]\n"
        "where:\n  zip: {eq: '10001'}\n"
    )
    outcome = run(project, seg, people(150), ["meta"])
    assert outcome.blocked
    assert verdict(outcome, "opaque-name", "meta").status == "fail"


def test_candidates_without_member_key_are_excluded(project):
    frame = people(150).with_columns(
        pl.when(pl.int_range(pl.len()) < 5)
        .then(None)
        .otherwise(pl.col("member_key"))
        .alias("member_key")
    )
    outcome = run(project, NEWSLETTER, frame, ["meta"])
    assert outcome.report["figures"]["without_member_key"] == 5
    assert outcome.releases["meta"].members.height == 145


def test_segment_without_destinations_is_blocked(project):
    outcome = run(project, NEWSLETTER, people(150), [])
    assert outcome.blocked and outcome.releases == {}


def test_same_audience_small_change_is_held_not_blocked(project):
    first = run(project, NEWSLETTER, people(300), ["meta"], keep=True)
    second = run(project, NEWSLETTER, people(310), ["meta"])
    assert not second.blocked
    rel = second.releases["meta"]
    assert rel.hold_against == first.releases["meta"].release_id
    assert rel.holds == 10 and rel.k_diff == 50


# ---------------------------------------------------------------------------------------
# Recording


def test_record_writes_private_sorted_membership_and_rows(project):
    outcome = run(project, NEWSLETTER, people(150), ["meta", "file"], keep=True)
    rows = project["conn"].execute("SELECT * FROM releases ORDER BY destination").fetchall()
    assert [r["destination"] for r in rows] == ["file", "meta"]
    for row in rows:
        path = project["state_dir"] / row["membership_path"]
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        frame = pl.read_parquet(path)
        assert frame.schema == pl.Schema({"member_key": pl.UInt64})
        keys = frame.get_column("member_key")
        assert keys.is_sorted() and keys.n_unique() == 150 == row["members"]
        assert row["policy_digest"] == outcome.releases["meta"].policy_digest


def test_record_refuses_blocked_outcome(project):
    outcome = run(project, NEWSLETTER, people(5), ["meta"])
    with pytest.raises(InternalError, match="blocked"):
        record(outcome, project["conn"])


def test_record_twice_is_refused_and_keeps_the_membership(project):
    outcome = run(project, NEWSLETTER, people(150), ["meta"], keep=True)
    with pytest.raises(InternalError, match="already recorded"):
        record(outcome, project["conn"])
    files = list((project["state_dir"] / "releases").glob("*.parquet"))
    assert len(files) == 1


def test_record_removes_files_when_rows_fail(project):
    outcome = run(project, NEWSLETTER, people(150), ["meta", "file"])
    with transaction(project["conn"]):
        project["conn"].execute("DELETE FROM builds")  # the rows now violate the foreign key
    with pytest.raises(sqlite3.IntegrityError):
        record(outcome, project["conn"])
    assert list((project["state_dir"] / "releases").glob("*")) == []
    assert project["conn"].execute("SELECT count(*) FROM releases").fetchone()[0] == 0


# ---------------------------------------------------------------------------------------
# Hand-made releases are refused


@pytest.fixture
def genuine(project) -> Release:
    return run(project, NEWSLETTER, people(150), ["meta"]).releases["meta"]


def test_genuine_release_verifies(genuine):
    assert genuine.verify()
    assert require_release(genuine) is genuine
    assert copy.copy(genuine) is genuine and copy.deepcopy(genuine) is genuine


def test_constructor_without_capability_is_refused(genuine):
    values = {f.name: getattr(genuine, f.name) for f in dataclasses.fields(Release)}
    with pytest.raises(InternalError, match="only be created by the policy gate"):
        Release(**values, _capability=object())


def test_subclass_is_refused():
    with pytest.raises(TypeError, match="can't be subclassed"):

        class Fake(Release):  # type: ignore[misc]
            pass


def test_dataclasses_replace_is_refused(genuine):
    with pytest.raises((ValueError, TypeError)):
        dataclasses.replace(genuine, members=genuine.members.head(10))


def test_replace_with_stolen_capability_does_not_verify(genuine):
    forged = dataclasses.replace(
        genuine,
        members=genuine.members.head(10),
        _capability=release_module._CAPABILITY,
    )
    assert not forged.verify()
    with pytest.raises(InternalError, match="not a sealed Release"):
        require_release(forged)


def test_object_new_is_refused():
    blank = object.__new__(Release)
    assert not blank.verify()
    with pytest.raises(InternalError, match="not a sealed Release"):
        require_release(blank)


def test_copy_with_edited_members_is_refused(genuine):
    edited = copy.copy(genuine)
    object.__setattr__(edited, "members", genuine.members.head(100))
    with pytest.raises(InternalError, match="not a sealed Release"):
        require_release(edited)


def test_in_place_edit_of_members_is_refused(genuine):
    genuine.members.replace_column(
        1, pl.Series("EXTERN_ID", ["someone-else"] * genuine.members.height)
    )
    with pytest.raises(InternalError):
        require_release(genuine)


def test_edited_digest_is_refused(genuine):
    object.__setattr__(genuine, "policy_digest", "sha256:" + "0" * 64)
    with pytest.raises(InternalError):
        require_release(genuine)


@pytest.mark.parametrize("thing", [None, {"members": []}, "release", 42])
def test_non_releases_are_refused(thing):
    with pytest.raises(InternalError, match="not a sealed Release"):
        require_release(thing)


def test_release_cannot_be_pickled(genuine):
    with pytest.raises(TypeError, match="pickled"):
        pickle.dumps(genuine)
