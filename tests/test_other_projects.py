"""The difference check across projects (policies/difference.py, "A new project over the
same CRM"): a marketer starts a second project over the same data — a new salt, so its
member keys never compare with the first project's — and releases to the same ad account
an audience one person apart from one the first project holds there. Both projects' people
are compared through the hashed identifiers the platform matches on, kept per OS
account in custody. Documented commands, the sandboxes on 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from conftest import AS_OF, Project, frozen_clock
from test_composition import write_segment

DAY = AS_OF.isoformat()


@pytest.fixture(scope="module", autouse=True)
def _stopped_clock() -> Iterator[None]:
    """The sample data is fixed on AS_OF: the wall clock stops there (in this process)."""
    with frozen_clock(AS_OF):
        yield


def _salt(p: Project) -> bytes:
    return (p.root / ".audiences" / "salt").read_bytes()


def _first(make_project: Any, edit: Any = None) -> tuple[Project, str]:
    """A project that released NY+FL to the Meta account, and a CA person outside it
    (``edit``: applied to its audiences.toml text first)."""
    p = make_project(rows=3000, pack="nightly-pack")  # k_diff 10
    if edit is not None:
        p.edit_toml(edit)
    write_segment(p.root, "ca", ["CA"])
    p.approve("ca")
    (one,) = sorted(p.contact_ids(p.release("ca", "meta", as_of=AS_OF).members.head(1)))
    write_segment(p.root, "q", ["NY", "FL"])
    p.approve("q")
    built = p.cli("build", "q", "--as-of", DAY)
    assert built.exit_code == 0, built.stderr
    return p, one


def test_attack_a_new_project_over_the_same_crm_one_person_apart(make_project: Any) -> None:
    p, one = _first(make_project)
    b = make_project(rows=3000, pack="nightly-pack", name="second")
    write_segment(b.root, "q2", ["NY", "FL"], (one,))
    b.approve("q2")  # the officer approves it in the new project
    attack = b.cli("build", "q2", "--as-of", DAY)
    assert _salt(b) != _salt(p)  # a new project: its member keys are not the first's
    out = attack.stdout + attack.stderr
    assert attack.exit_code == 3, out
    assert "blocked q2: difference [meta]" in out and "another project" in out
    assert one not in out
    # the report names the first project's audience (figures below k shown as "< k")
    (check,) = [c for c in _report(b)["difference_checks"] if c["note"].startswith("another")]
    assert (check["segment"], check["result"]) == ("q", "block")
    assert _exact(b, "q2") == (1, 0)  # one person more than the first project's audience
    # the same people as the first project's audience: nothing to disclose, it passes
    write_segment(b.root, "ny-fl", ["NY", "FL"])
    b.approve("ny-fl")
    assert b.cli("build", "ny-fl", "--as-of", DAY).exit_code == 0


def test_attack_one_person_fewer_in_a_new_project(make_project: Any) -> None:
    p = make_project(rows=3000, pack="nightly-pack")
    write_segment(p.root, "ca", ["CA"])
    p.approve("ca")
    (one,) = sorted(p.contact_ids(p.release("ca", "meta", as_of=AS_OF).members.head(1)))
    write_segment(p.root, "q", ["NY", "FL"], (one,))  # the first project holds one more
    p.approve("q")
    assert p.cli("build", "q", "--as-of", DAY).exit_code == 0
    b = make_project(rows=3000, pack="nightly-pack", name="second")
    write_segment(b.root, "q2", ["NY", "FL"])
    b.approve("q2")
    attack = b.cli("build", "q2", "--as-of", DAY)
    assert attack.exit_code == 3 and "another project" in attack.stdout + attack.stderr
    assert _exact(b, "q2") == (0, 1)


def test_a_far_audience_in_a_new_project_passes_and_is_compared(make_project: Any) -> None:
    _first(make_project)
    b = make_project(rows=3000, pack="nightly-pack", name="second")
    write_segment(b.root, "tx", ["TX", "IL"])
    b.approve("tx")
    built = b.cli("build", "tx", "--as-of", DAY)
    assert built.exit_code == 0, built.stderr
    report = _report(b)
    (check,) = [c for c in report["difference_checks"] if c["note"].startswith("another")]
    assert check["result"] == "pass" and check["segment"] == "q"
    assert check["only_new"] >= 10 and check["only_old"] >= 10


def test_the_first_project_sees_the_new_projects_audiences(make_project: Any) -> None:
    """And the other way round: the first project's next audience is compared with what
    the new project released since."""
    p, one = _first(make_project)
    b = make_project(rows=3000, pack="nightly-pack", name="second")
    write_segment(b.root, "tx", ["TX"])
    b.approve("tx")
    assert b.cli("build", "tx", "--as-of", DAY).exit_code == 0
    write_segment(p.root, "tx2", ["TX"], (one,))
    p.approve("tx2")
    attack = p.cli("build", "tx2", "--as-of", DAY)
    assert attack.exit_code == 3 and "another project" in attack.stdout + attack.stderr


def test_a_taken_down_audience_of_another_project_no_longer_counts(make_project: Any) -> None:
    p, one = _first(make_project)
    assert p.cli_json("sync", "q", "--as-of", DAY)["exit_code"] == 0
    assert p.cli("takedown", "q", "--by", p.approver.name).exit_code == 0
    b = make_project(rows=3000, pack="nightly-pack", name="second")
    write_segment(b.root, "q2", ["NY", "FL"], (one,))
    b.approve("q2")
    built = b.cli("build", "q2", "--as-of", DAY)
    assert built.exit_code == 0, built.stdout + built.stderr


def test_an_unreadable_link_file_blocks_rather_than_passes(make_project: Any) -> None:
    """An unknown state is never an empty one: another project's audience whose link file
    is gone blocks the release (restore the custody folder), it is not skipped."""
    from policies.privacy.ledger import ledger_home

    _first(make_project)
    (links,) = list((ledger_home() / "releases").rglob("*.links.parquet"))
    links.unlink()
    b = make_project(rows=3000, pack="nightly-pack", name="second")
    write_segment(b.root, "tx", ["TX", "IL"])
    b.approve("tx")
    built = b.cli("build", "tx", "--as-of", DAY)
    assert built.exit_code == 3
    says = "link file in the custody store is missing or unreadable"
    assert says in built.stdout + built.stderr and says in _text(b)


def test_link_keys_compare_people_not_records() -> None:
    """Unit: the translation joins people on any shared hashed e-mail or phone; people
    without either are left out on both sides."""
    from policies.difference import compare_sets, link_frame, translate

    h = {n: f"{n:016x}" + "0" * 48 for n in range(1, 10)}
    new = pl.DataFrame(
        {
            "member_key": pl.Series([1, 2, 3, 4], dtype=pl.UInt64),
            "EMAIL": [h[1], h[2], None, None],
            "PHONE": [None, h[5], h[6], None],  # 4 has neither: left out
        }
    )
    old = pl.DataFrame(
        {
            "member_key": pl.Series([101, 102, 103, 104], dtype=pl.UInt64),
            "hashed_email": [h[1], None, h[9], None],  # 101 is 1 (e-mail)
            "hashed_phone_number": [None, h[5], None, None],  # 102 is 2 (phone)
        }
    )
    linked = translate(link_frame(new), link_frame(old))
    new_keys, old_keys = linked.new, linked.old
    assert new_keys.tolist() == [3, 101, 102]  # in the other audience's keys
    assert old_keys.tolist() == [101, 102, 103]
    assert compare_sets(new_keys, old_keys)[:2] == (1, 1)  # 3 only in new, 103 only in old
    # two of this release's records the platform takes for one user (a shared e-mail) are
    # one person there
    twins = pl.DataFrame({"member_key": pl.Series([7, 8], dtype=pl.UInt64), "EMAIL": [h[1]] * 2})
    assert translate(link_frame(twins), link_frame(old)).new.tolist() == [101]


def _exact(p: Project, segment: str) -> tuple[int, int]:
    """(only_new, only_old) against the other project's audience, from the gate's verdict
    (a dry run: ``plan``)."""
    from audiences.pipeline.sync import plan

    (result,), _ = plan(p.config(), [segment], as_of=AS_OF)
    (check,) = [
        c
        for v in result.outcome.verdicts
        for c in v.checks
        if v.kind == "difference"
        and c["note"].startswith("another")
        and not c["release_id"].startswith("synced:")  # (its synced copy: compared too)
    ]
    return int(check["only_new"]), int(check["only_old"])


def _last_build(p: Project) -> str:
    ((build_id,),) = p.query("SELECT build_id FROM builds ORDER BY started_at DESC LIMIT 1")
    return str(build_id)


def _report(p: Project) -> dict[str, Any]:
    import json

    path = p.root / ".audiences" / "reports" / f"{_last_build(p)}.json"
    doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return doc


def _text(p: Project) -> str:
    path = p.root / ".audiences" / "reports" / f"{_last_build(p)}.md"
    return Path(path).read_text(encoding="utf-8")


def test_name_and_postal_code_link_people_without_email_or_phone() -> None:
    """Unit: a new project that unmaps e-mail and phone still sends names and postal codes
    (the platform matches on them): they link, in either layout, and the order of first
    and last name matters."""
    from policies.difference import link_frame, translate

    h = {n: f"{n:016x}" + "0" * 48 for n in range(1, 10)}
    meta = pl.DataFrame(
        {
            "member_key": pl.Series([1, 2], dtype=pl.UInt64),
            "FN": [h[1], h[2]],
            "LN": [h[2], h[1]],
            "ZIP": [h[3], h[3]],
        }
    )
    again = meta.head(1).with_columns(pl.Series("member_key", [11], dtype=pl.UInt64))
    linked = translate(link_frame(meta), link_frame(again))
    assert linked.new.tolist() == [2, 11] and linked.old.tolist() == [
        11
    ]  # swapped names stay apart
    google = pl.DataFrame(
        {
            "member_key": pl.Series([1, 2, 3], dtype=pl.UInt64),
            "hashed_first_name": [h[1], h[1], None],
            "hashed_last_name": [h[2], h[2], h[2]],
            "postal_code": ["10001", "10002", "10001"],
        }
    )
    g2 = google.with_columns(pl.Series("member_key", [21, 22, 23], dtype=pl.UInt64))
    assert link_frame(google).height == 2  # no first name: no name link
    linked = translate(link_frame(google), link_frame(g2))
    assert linked.new.tolist() == [21, 22] and linked.old.tolist() == [21, 22]
    # a release without e-mails is not compared on the other's e-mails
    mails = pl.DataFrame({"member_key": pl.Series([31], dtype=pl.UInt64), "hashed_email": [h[9]]})
    both = pl.concat([link_frame(g2), link_frame(mails)])
    assert translate(link_frame(google), both).old.tolist() == [21, 22]


def test_attack_a_new_project_that_unmaps_email_and_phone(make_project: Any) -> None:
    """The new project sends names and postal codes only (the platform still matches on
    them): its people still link to the first project's."""
    import re

    _, one = _first(make_project)
    b = make_project(rows=3000, pack="nightly-pack", name="second")
    b.edit_toml(lambda t: re.sub(r'(?m)^(email|phone) = "\w+"\n', "", t))
    assert 'email = "email"' not in b.toml.read_text()
    write_segment(b.root, "q2", ["NY", "FL"], (one,))
    b.approve("q2")
    attack = b.cli("build", "q2", "--as-of", DAY)
    assert attack.exit_code == 3 and "another project" in attack.stdout + attack.stderr
    only_new, only_old = _exact(b, "q2")
    # (only_old: the first project's people the second cannot name to Meta without e-mail
    # or phone — it does not release them — now linked through the external id both send)
    assert only_new == 1 and 0 < only_old < 10


def test_a_custody_store_from_before_link_keys_is_upgraded_in_place(tmp_path: Path) -> None:
    """A store made by the previous version (no ``links`` column) opens, gains the column
    and keeps its rows; its releases have no link keys and are not compared."""
    import sqlite3

    import policies.privacy.ledger as ledger
    from audiences.compliance import custody

    old = tmp_path / "home"
    old.mkdir(mode=0o700)
    conn = sqlite3.connect(old / custody.FILE_NAME)
    conn.executescript(custody._SCHEMA)  # its tables as the previous version made them
    assert "links" not in {row[1] for row in conn.execute("PRAGMA table_info(releases)")}
    conn.execute(
        "INSERT INTO releases VALUES ('r-1', 's', 'act_1', 'q', 'meta', 'b-1', "
        "'2026-01-01T00:00:00Z', 12, 'r-1.parquet', 'p')"
    )
    conn.commit()
    conn.close()
    saved = ledger.LEDGER_HOME
    ledger.LEDGER_HOME = old
    try:
        with custody.opened() as store:
            cols = [row[1] for row in store.execute("PRAGMA table_info(releases)")]
            assert {"links", "k_diff"} <= set(cols)
            assert store.execute("SELECT release_id, links FROM releases").fetchall() == [
                ("r-1", None)
            ]
            assert custody.foreign_releases_for(store, b"x" * 32, "act_1") == []
        with custody.opened():  # and again: nothing to add
            pass
    finally:
        ledger.LEDGER_HOME = saved


def test_a_build_waits_while_another_state_releases_to_the_account(
    make_project: Any, private_ledger: Path
) -> None:
    """Two projects building at once each checked the account without the other's
    release, and both went out (a race an attacker can retry until won). The gate's check
    and the registration of the releases hold the account's lock: a build in another
    process waits for it, then checks against what the holder released."""
    import subprocess
    import time

    from conftest import audiences_command

    from audiences.compliance import custody
    from audiences.compliance.workflow import destination_account

    _, one = _first(make_project)
    b = make_project(rows=3000, pack="nightly-pack", name="second")
    write_segment(b.root, "q2", ["NY", "FL"], (one,))
    b.approve("q2")
    argv = [*audiences_command(private_ledger), "-p", str(b.root), "build", "q2"]
    with custody.account_locks([destination_account(b.config(), "meta")]):
        child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 8  # the build alone takes about 2 s
        while time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.2)
        waited = child.poll() is None
    out, err = child.communicate(timeout=120)
    assert waited, (child.returncode, out, err)
    assert child.returncode == 3 and "another project" in out + err


def test_attack_a_takedown_of_the_same_name_in_the_new_project(make_project: Any) -> None:
    """Takedowns are kept by segment and account: the new project syncs a harmless
    segment named like the first project's live audience and takes it down, so that the
    first project's audience no longer counted as live. An audience stops counting only
    when its own takedown was confirmed."""
    p, one = _first(make_project)
    assert p.cli_json("sync", "q", "--as-of", DAY)["exit_code"] == 0
    b = make_project(rows=3000, pack="nightly-pack", name="second")
    write_segment(b.root, "q", ["TX", "IL"])
    b.approve("q")
    assert b.cli_json("sync", "q", "--as-of", DAY)["exit_code"] == 0
    assert b.cli("takedown", "q", "--by", "mallory").exit_code == 0
    assert p.boxes.meta.members(p.remote_id("q", "meta"))  # the first project's: still live
    write_segment(b.root, "q2", ["NY", "FL"], (one,))
    b.approve("q2")
    attack = b.cli("sync", "q2", "--as-of", DAY)
    assert attack.exit_code == 3 and "another project" in attack.stdout + attack.stderr


def test_a_new_project_that_sends_nothing_meta_matches_releases_no_one(
    make_project: Any,
) -> None:
    """E-mail, phone, names and external id unmapped: Meta can match none of its people,
    so none is counted or released — blocked by min-size before any comparison."""
    import re

    _, one = _first(make_project)
    b = make_project(rows=3000, pack="nightly-pack", name="second")
    b.edit_toml(
        lambda t: re.sub(r'(?m)^(email|phone|external_id|first_name|last_name) = "\w+"\n', "", t)
    )
    write_segment(b.root, "q2", ["NY", "FL"], (one,))
    b.approve("q2")
    attack = b.cli("build", "q2", "--as-of", DAY)
    assert attack.exit_code == 3 and "min-size" in attack.stdout + attack.stderr
    (size,) = [v for v in _report(b)["verdicts"] if v["id"] == "min-size"]
    assert size["evidence"]["no_identifier"] >= 100, size


def test_attack_a_new_project_that_sends_nothing_to_link(make_project: Any) -> None:
    """The new project sends only names with a ZIP, a birth date or a city (Meta matches on
    them), and the first project sends no first name: the new project's people have no
    link of a kind the first project sends, so they could be anyone — each difference may
    lie anywhere from 0 to the audience's size, and the release is blocked."""
    import re

    _, one = _first(make_project, lambda t: re.sub(r'(?m)^first_name = "\w+"\n', "", t))
    b = make_project(rows=3000, pack="nightly-pack", name="second")
    b.edit_toml(lambda t: re.sub(r'(?m)^(email|phone|external_id) = "\w+"\n', "", t))
    write_segment(b.root, "q2", ["NY", "FL"], (one,))
    b.approve("q2")
    attack = b.cli("build", "q2", "--as-of", DAY)
    assert attack.exit_code == 3 and "another project" in attack.stdout + attack.stderr
    (check,) = [c for c in _report(b)["difference_checks"] if c["note"].startswith("another")]
    assert "could be either way" in check["note"], check
    assert check["unlinked_new"] >= 100  # hundreds of people, none comparable
    assert not re.search(r"\d+ of this", check["note"])  # counts are figures, not text
    assert _exact(b, "q2") == (0, 0)  # nothing linked, yet blocked


def _opt_out(x: Project, ids: list[str]) -> None:
    hit = pl.col("contact_id").is_in(ids)
    c = x.contacts()
    x.write_contacts(
        c.with_columns(
            pl.when(hit).then(False).otherwise(pl.col("marketing_opt_in")).alias("marketing_opt_in")
        )
    )


def _over_the_same_crm(b: Project, a: Project) -> None:
    """Point ``b``'s sources at ``a``'s export: two projects over one CRM."""
    b.edit_toml(
        lambda t: t.replace(
            'path = "data/contacts.parquet"', f'path = "{a.root / "data" / "contacts.parquet"}"'
        ).replace('path = "data/events.parquet"', f'path = "{a.root / "data" / "events.parquet"}"')
    )


def test_nightly_opt_outs_with_two_projects_holding_the_same_audience(make_project: Any) -> None:
    """Both projects hold NY+FL on the account, over one CRM export with the same
    settings; three members opt out. Each night's sync removes them (forced removals) and
    passes: the other project's copy, which still holds them until its own sync, does not
    block it (its own rules remove them too: they are forced removals there as well)."""
    p, _ = _first(make_project)
    assert p.cli_json("sync", "q", "--as-of", DAY)["exit_code"] == 0
    b = make_project(rows=3000, pack="nightly-pack", name="second")
    _over_the_same_crm(b, p)
    write_segment(b.root, "ny-fl", ["NY", "FL"])
    b.approve("ny-fl")
    assert b.cli_json("sync", "ny-fl", "--as-of", DAY)["exit_code"] == 0
    leaving = sorted(p.contact_ids(p.release("q", "meta").members.head(3)))
    _opt_out(p, leaving)  # the one export both read
    for x in (p, b, p):
        night = x.cli_json("sync", "--all", "--as-of", DAY)
        assert night["exit_code"] == 0, night
    for x, seg in ((p, "q"), (b, "ny-fl")):
        sent = x.boxes.meta.member_key_values(x.remote_id(seg, "meta"), "EXTERN_ID")
        assert sent and not set(leaving) & sent


def test_opt_outs_in_two_projects_over_separate_copies_clear_in_a_night(
    make_project: Any,
) -> None:
    """The same, but each project reads its own copy of the export: neither trusts the
    other's exclusions (a copy could be doctored), so the first project to build after the
    opt-outs is blocked while the other's platform copy still holds them — its forced
    removals go out all the same — and from the next run on both pass: an exclusion counts
    as a forced removal in the other's audience once that one's platform copy dropped it
    (no deadlock)."""
    p, _ = _first(make_project)
    assert p.cli_json("sync", "q", "--as-of", DAY)["exit_code"] == 0
    b = make_project(rows=3000, pack="nightly-pack", name="second")
    write_segment(b.root, "ny-fl", ["NY", "FL"])
    b.approve("ny-fl")
    assert b.cli_json("sync", "ny-fl", "--as-of", DAY)["exit_code"] == 0
    leaving = sorted(p.contact_ids(p.release("q", "meta").members.head(3)))
    _opt_out(p, leaving)
    _opt_out(b, leaving)
    codes = [x.cli("sync", "--all", "--as-of", DAY).exit_code for x in (p, b)]
    assert codes == [3, 0], codes  # p blocked (b's copy holds them), b passes: p's dropped
    for x, seg in ((p, "q"), (b, "ny-fl")):  # the removals went out either way
        sent = x.boxes.meta.member_key_values(x.remote_id(seg, "meta"), "EXTERN_ID")
        assert sent and not set(leaving) & sent
    for x in (p, b, p):
        night = x.cli_json("sync", "--all", "--as-of", DAY)
        assert night["exit_code"] == 0, night


def test_attack_a_new_project_with_a_weaker_difference_rule(make_project: Any) -> None:
    """The new project's pack asks only k_diff 2 (approved by an officer there): three
    people apart from the first project's audience, protected by k_diff 10. The larger
    of the two projects' rules applies."""
    import re

    p = make_project(rows=3000, pack="nightly-pack")  # k_diff 10
    write_segment(p.root, "ca", ["CA"])
    p.approve("ca")
    three = tuple(sorted(p.contact_ids(p.release("ca", "meta", as_of=AS_OF).members.head(3))))
    write_segment(p.root, "q", ["NY", "FL"])
    p.approve("q")
    assert p.cli("build", "q", "--as-of", DAY).exit_code == 0
    b = make_project(rows=3000, pack="nightly-pack", name="second")
    weak = (
        (b.root / "policies" / "nightly-pack.yaml").read_text().replace("k_diff: 10", "k_diff: 2")
    )
    (b.root / "policies" / "weak.yaml").write_text(weak.replace("nightly-test", "weak-test"))
    b.edit_toml(lambda t: re.sub(r'(?m)^pack = ".*?"', 'pack = "policies/weak.yaml"', t))
    write_segment(b.root, "q2", ["NY", "FL"], three)
    b.approve("q2")
    assert _exact(b, "q2") == (3, 0)
    attack = b.cli("build", "q2", "--as-of", DAY)
    assert attack.exit_code == 3 and "another project" in attack.stdout + attack.stderr
    (check,) = [c for c in _report(b)["difference_checks"] if c["note"].startswith("another")]
    assert "k_diff 10, the larger of the two" in check["note"]


def test_attack_a_takedown_of_another_destination_of_the_segment(make_project: Any) -> None:
    """The first project sends q to two destinations on one account and takes down one:
    q on the other is still live and still counts. A takedown stops an audience counting
    only once the platform confirmed it, and only that audience."""
    import re

    p = make_project(rows=3000, pack="nightly-pack")
    found = re.search(r"(?ms)^\[destinations\.meta\]\n.*?(?=^\[)", p.toml.read_text())
    assert found is not None
    block = found.group(0)
    p.edit_toml(
        lambda t: t.replace(
            block, block + block.replace("[destinations.meta]", "[destinations.meta2]")
        )
    )
    write_segment(p.root, "ca", ["CA"])
    p.approve("ca")
    (one,) = sorted(p.contact_ids(p.release("ca", "meta", as_of=AS_OF).members.head(1)))
    write_segment(p.root, "q", ["NY", "FL"])
    seg = p.root / "segments" / "q.yaml"
    seg.write_text(seg.read_text().replace("[meta]", "[meta, meta2]"))
    p.approve("q")
    assert p.cli_json("sync", "q", "--as-of", DAY)["exit_code"] == 0
    assert p.cli("takedown", "q", "--destination", "meta2", "--by", "mallory").exit_code == 0
    assert p.boxes.meta.members(p.remote_id("q", "meta"))  # still live
    b = make_project(rows=3000, pack="nightly-pack", name="second")
    write_segment(b.root, "q2", ["NY", "FL"], (one,))
    b.approve("q2")
    attack = b.cli("sync", "q2", "--as-of", DAY)
    assert attack.exit_code == 3 and "another project" in attack.stdout + attack.stderr
    # and once q is taken down on `meta` too (confirmed), it no longer counts
    assert p.cli("takedown", "q", "--by", "mallory").exit_code == 0
    assert b.cli("build", "q2", "--as-of", DAY).exit_code == 0


def test_attack_a_suppression_list_of_the_new_projects_own(make_project: Any) -> None:
    """The new project lists one member of the first project's live audience in a
    suppression list of its own: she is excluded there, and her absence counted as a
    forced removal (exempt) — so the audience one person short passed. Only what the CRM
    itself says (consent, do-not-contact, deceased, minors…) is a forced removal in
    another project's audience; a suppression list is a file of this project's."""
    p, _ = _first(make_project)
    assert p.cli_json("sync", "q", "--as-of", DAY)["exit_code"] == 0
    (t,) = sorted(p.contact_ids(p.release("q", "meta").members.head(1)))
    email = p.contacts().filter(pl.col("contact_id") == t).get_column("email").item()
    b = make_project(rows=3000, pack="nightly-pack", name="second")
    (b.root / "data" / "list.csv").write_text(f"email\n{email.strip()}\n", encoding="utf-8")
    listed = (
        '[policy]\nsuppression = [ { path = "data/list.csv", column = "email", kind = "email" } ]\n'
    )
    b.edit_toml(lambda text: text.replace("[policy]\n", listed))
    write_segment(b.root, "q2", ["NY", "FL"])
    b.approve("q2")
    attack = b.cli("sync", "q2", "--as-of", DAY)
    assert attack.exit_code == 3 and "another project" in attack.stdout + attack.stderr
    assert _exact(b, "q2") == (0, 1)


@pytest.mark.parametrize("where", ["same project", "new project"])
def test_attack_a_one_person_segment_as_a_membership_oracle(make_project: Any, where: str) -> None:
    """A segment of one named person is refused by min-size whatever happens; but the
    difference check still ran, and blocked exactly when she was not in the account's
    other audience — her membership, in the build's output. A release min-size refuses
    is not compared."""
    p, outside = _first(make_project)
    (inside,) = sorted(p.contact_ids(p.release("q", "meta").members.head(1)))
    x = p if where == "same project" else make_project(rows=3000, pack="nightly-pack", name="b")
    said = {}
    for name, who in (("s1", inside), ("s2", outside)):
        write_segment(x.root, name, ["ZZ"], (who,))  # no state ZZ: the one person
        x.approve(name)
        r = x.cli("build", name, "--as-of", DAY)
        assert r.exit_code == 3
        lines = (r.stdout + r.stderr).replace(name, "S").splitlines()
        said[name] = [line for line in lines if line.startswith("blocked")]
    assert any("min-size [meta]" in line for line in said["s1"])
    assert not any("difference" in line for line in said["s2"])
    assert said["s1"] == said["s2"]  # the same words, in or out


def test_attack_a_decoy_external_id_and_names_only(make_project: Any) -> None:
    """The new project sends first and last name, city and state (Meta matches on them),
    its external id mapped to another column (a decoy that links nobody), and no e-mail,
    phone, postal code or birth date: its people all had a link of a shared kind, none
    matched, and the two audiences looked far apart. The name with city and state links
    them (a review found this; its pack keeps people of unknown age, so that no birth
    date is needed)."""
    import re

    _, one = _first(make_project)
    b = make_project(rows=3000, pack="nightly-pack", name="second")
    pack = (b.root / "policies" / "nightly-pack.yaml").read_text()
    (b.root / "policies" / "decoy.yaml").write_text(
        pack.replace("nightly-test", "decoy-test")
        + "  - id: minors\n    params: {min_age: 18, unknown_age: keep}\n"
    )
    b.edit_toml(lambda t: re.sub(r'(?m)^pack = ".*?"', 'pack = "policies/decoy.yaml"', t))
    b.edit_toml(lambda t: re.sub(r'(?m)^(email|phone|zip|birth_date) = "\w+"\n', "", t))
    b.edit_toml(lambda t: t.replace('external_id = "contact_id"', 'external_id = "street"'))
    (b.root / "segments" / "q2.yaml").write_text(
        "name: q2\ndescription: decoy\ndestinations: [meta]\nwhere:\n  all:\n"
        "    - any:\n        - state: {in: [NY, FL]}\n"
        f"        - contact_id: {{in: [{one}]}}\n"
        '    - birth_date: {lte: "2007-06-02"}\n',
        encoding="utf-8",
    )
    b.approve("q2")
    only_new, only_old = _exact(b, "q2")
    # (only_old: the new project, with names only, counts namesakes of one city as one
    # person — nothing tells them apart there — where the first project's e-mails do)
    assert 1 <= only_new < 10 and only_old <= 2, (only_new, only_old)
    attack = b.cli("build", "q2", "--as-of", DAY)
    assert attack.exit_code == 3 and "another project" in attack.stdout + attack.stderr


def test_namesakes_with_their_own_emails_stay_apart() -> None:
    """Unit: a father and son of one name at one address, each with his own e-mail, are
    two people (as the platform matches them); a namesake without an e-mail or phone on
    one side links by name."""
    from policies.difference import link_frame, translate

    h = {n: f"{n:016x}" + "0" * 48 for n in range(1, 10)}
    first = pl.DataFrame(
        {
            "member_key": pl.Series([101], dtype=pl.UInt64),
            "EMAIL": [h[1]],
            "FN": [h[5]],
            "LN": [h[6]],
            "ZIP": [h[7]],
        }
    )
    son = first.with_columns(
        pl.Series("member_key", [1], dtype=pl.UInt64), pl.Series("EMAIL", [h[2]])
    )
    linked = translate(link_frame(son), link_frame(first))
    assert linked.new.tolist() == [1] and linked.old.tolist() == [101]  # two people
    nameless = son.with_columns(pl.Series("EMAIL", [None], dtype=pl.String))
    assert translate(link_frame(nameless), link_frame(first)).new.tolist() == [101]
    # and a namesake among the excluded is not taken for the other project's member
    gone = translate(link_frame(first), link_frame(first), link_frame(son)).gone
    assert gone.tolist() == []


@pytest.mark.parametrize("where", ["same project", "new project"])
def test_attack_an_audience_equal_to_anothers_held_release(make_project: Any, where: str) -> None:
    """q is synced, then changed by one person: the add is held back (fewer than k_diff),
    so the platform still holds the old q while its newest release has her. Another
    audience equal to that newest release passed — and on the platform it is q plus her.
    What the platform holds after each sync is kept too, and compared."""
    p, one = _first(make_project)
    assert p.cli_json("sync", "q", "--as-of", DAY)["exit_code"] == 0
    write_segment(p.root, "q", ["NY", "FL"], (one,))
    p.approve("q")
    assert p.cli_json("sync", "q", "--as-of", DAY)["exit_code"] == 0
    held = p.boxes.meta.member_key_values(p.remote_id("q", "meta"), "EXTERN_ID")
    assert one not in held  # held back: not on the platform
    x = p if where == "same project" else make_project(rows=3000, pack="nightly-pack", name="b")
    write_segment(x.root, "r", ["NY", "FL"], (one,))
    x.approve("r")
    attack = x.cli("sync", "r", "--as-of", DAY)
    assert attack.exit_code == 3 and "difference" in attack.stdout + attack.stderr


def test_attack_a_stricter_minimum_age_of_the_new_projects_own(
    make_project: Any,
) -> None:
    """A holds q = NY+FL. B's pack raises `minors.min_age` just enough to exclude the few
    youngest of q's members: B's q2 = NY+FL minus them. Taken for forced removals in A's
    audience, they would not count (pairwise or in the patterns); on the platform q − q2
    is those few people. Like a suppression list, the threshold is B's own: a build's
    exclusions are forced removals in another project's audience only when both projects
    exclude people by the same rules and columns (policies/gate.py, exclusion_digest)."""
    import re

    a = make_project(rows=3000, pack="nightly-pack")
    write_segment(a.root, "q", ["NY", "FL"])
    a.approve("q")
    assert a.cli_json("sync", "q", "--as-of", DAY)["exit_code"] == 0
    ids = a.contact_ids(a.release("q", "meta").members)
    born = a.contacts().filter(pl.col("contact_id").is_in(sorted(ids))).get_column("birth_date")
    m, few = 18, 0
    while not 1 <= few <= 9:
        m += 1
        few = int((born > AS_OF.replace(year=AS_OF.year - m)).sum())
        assert m < 60
    b = make_project(rows=3000, pack="nightly-pack", name="b")
    pack = (b.root / "policies" / "nightly-pack.yaml").read_text().replace("nightly-test", "own")
    pack += f"  - id: minors\n    params: {{min_age: {m}, unknown_age: exclude}}\n"
    (b.root / "policies" / "own.yaml").write_text(pack)
    b.edit_toml(lambda t: re.sub(r'(?m)^pack = ".*?"', 'pack = "policies/own.yaml"', t))
    write_segment(b.root, "q2", ["NY", "FL"])
    b.approve("q2")
    attack = b.cli("sync", "q2", "--as-of", DAY)
    out = attack.stdout + attack.stderr
    on = a.boxes.meta
    q = set(on.member_key_values(a.remote_id("q", "meta"), "EXTERN_ID"))
    q2 = (
        set(on.member_key_values(b.remote_id("q2", "meta"), "EXTERN_ID"))
        if attack.exit_code == 0
        else q
    )
    assert attack.exit_code == 3 or not 0 < len(q - q2) < 10, (out, m, few, len(q - q2))


def test_attack_a_doctored_copy_of_the_export_in_the_new_project(make_project: Any) -> None:
    """The new project has the first's settings exactly, but reads its own copy of the
    export, in which three of q's members opted out: their absence must not pass as
    forced removals in q (the copy could say anything). Blocked; on the platform q − q2
    is never those three."""
    p = make_project(rows=3000, pack="nightly-pack")
    write_segment(p.root, "q", ["NY", "FL"])
    p.approve("q")
    assert p.cli_json("sync", "q", "--as-of", DAY)["exit_code"] == 0
    three = sorted(p.contact_ids(p.confirmed("q", "meta")))[:3]
    b = make_project(rows=3000, pack="nightly-pack", name="second")
    _opt_out(b, three)  # its own copy only
    write_segment(b.root, "q2", ["NY", "FL"])
    b.approve("q2")
    attack = b.cli("sync", "q2", "--as-of", DAY)
    assert attack.exit_code == 3 and "another project" in attack.stdout + attack.stderr
