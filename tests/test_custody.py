"""What a decision leaves outside the project (audiences/compliance/custody.py): the attacks
a marketer who can write the project folder would try after a revocation or a takedown —
restore an older backup, delete the state and trust a key of their own, copy the project
— each run with the documented commands against the sandboxes on 127.0.0.1.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import AS_OF, Approver, Project, frozen_clock, meta_rows
from test_state_loss import delete_state_db
from test_takedown import live

DAY = AS_OF.isoformat()


@pytest.fixture(scope="module", autouse=True)
def _stopped_clock() -> Iterator[None]:
    """The sample data is fixed on AS_OF: the wall clock stops there (in this process)."""
    with frozen_clock(AS_OF):
        yield


def copy_of(p: Project, tmp_path: Path, name: str = "copy") -> Project:
    """The whole project folder copied, state included (``cp -r``)."""
    target = tmp_path / name
    shutil.copytree(p.root, target, symlinks=True)
    return Project(target, p.boxes, p.tokens, p.approver)


def own_key(tmp_path: Path, name: str = "marketer") -> Approver:
    from audiences.compliance.keys import generate_keypair

    folder = tmp_path / f"{name}-keys"
    folder.mkdir()
    pair = generate_keypair(folder / f"{name}.key", folder / f"{name}.pub")
    return Approver(name, pair.private_path, pair.public_base64)


def list_only(p: Project, key: Approver) -> None:
    """``[approvers] keys`` edited to list ``key`` and nothing else."""
    import re

    p.edit_toml(
        lambda t: re.sub(
            r"(?m)^keys = \{.*\}$", f'keys = {{ "{key.name}" = "{key.public_base64}" }}', t
        )
    )


def _os_user() -> str:
    from audiences.core.actor import actor_name

    return actor_name(None)


def _reviews(p: Project) -> int:
    try:
        ((n,),) = p.query("SELECT count(*) FROM builds WHERE build_id LIKE 'v-%'")
    except sqlite3.OperationalError:  # no state yet
        return 0
    return int(n)


def approve_with(p: Project, segment: str, key: Approver) -> Any:
    return p.cli("approve", segment, "--by", key.name, "--key", str(key.private_key))


def test_attack_restored_backup_does_not_bring_back_a_revoked_approval(
    make_project: Any, tmp_path: Path
) -> None:
    p = make_project(rows=3000)
    ids = live(p)
    archive = tmp_path / "before-revocation.tar"
    taken = p.cli_json("state", "backup", "--out", str(archive))["audit_head"]["seq"]
    assert p.cli("revoke", "grown-ups", "--by", "qa.officer").exit_code == 0
    held = p.boxes.meta.members(ids["meta"])
    ((reached,),) = p.query("SELECT max(seq) FROM audit")
    assert reached > taken

    # the backup's state has the approval unrevoked, in its table and its audit chain
    restored = p.cli_json("state", "restore", str(archive))
    # the entries written since the backup are named, and the restored chain records it
    dropped = restored["audit_entries_not_restored"]
    assert (dropped["first"], dropped["last"]) == (taken + 1, reached)
    assert dropped["in"].startswith("state.db.before-restore-")
    (details,) = [json.loads(d) for (d,) in p.query(
        "SELECT details FROM audit WHERE kind = 'state_restore'")]  # fmt: skip
    assert details["replaced_head"]["seq"] == reached
    assert details["restored_head"]["seq"] == taken
    assert [r["segment"] for r in restored["revoked_again"]] == ["grown-ups"]
    assert restored["revoked_again"][0]["revoked_by"] == "qa.officer"
    # applied again in the restored state, and its audit chain says so
    assert p.query("SELECT count(*) FROM approvals WHERE revoked_at IS NULL") == [(0,)]
    assert p.query("SELECT actor FROM audit WHERE kind = 'revocation'") == [
        ("qa.officer (custody, restored by " + _os_user() + ")",)
    ]
    assert p.cli("audit", "verify").exit_code == 0
    doc = p.cli_json("sync", "grown-ups", "--full-refresh", "--as-of", DAY, expect=3)
    assert {r["status"] for r in doc["results"] if r["destination"] != "file"} == {"blocked"}
    assert "revoked" in doc["results"][0]["error"]
    assert p.boxes.meta.members(ids["meta"]) <= held  # nothing added back
    r = p.cli("build", "grown-ups", "--as-of", DAY)
    assert r.exit_code == 3 and "revoked" in r.stdout + r.stderr

    # the approval row put back by hand (an SQL UPDATE) is still refused, by custody
    conn = sqlite3.connect(p.state_db)
    conn.execute("UPDATE approvals SET revoked_at = NULL, revoked_by = NULL")
    conn.execute("DELETE FROM audit WHERE kind = 'revocation'")
    conn.commit()
    conn.close()
    doc = p.cli_json("sync", "grown-ups", "--as-of", DAY, expect=3)
    assert "a restored backup" in doc["results"][0]["error"]
    assert p.boxes.meta.members(ids["meta"]) <= held

    # the officer's new approval is what lets it out again
    p.approve("grown-ups")
    assert p.cli_json("sync", "grown-ups", "--as-of", DAY)["results"][0]["status"] == "ok"


def test_attack_deleted_state_and_a_key_of_ones_own_approves_nothing(
    make_project: Any, tmp_path: Path
) -> None:
    p = make_project(rows=3000)
    ids = live(p)
    mine = own_key(tmp_path)
    delete_state_db(p)
    list_only(p, mine)
    assert p.cli_json("state", "adopt")["adopted"]

    r = approve_with(p, "grown-ups", mine)
    assert r.exit_code == 3, r.stderr
    assert "not trusted for" in r.stderr and "qa.officer" in r.stderr
    assert r.stderr.count("\n") <= 2 and "Traceback" not in r.stderr
    # the refused first use left no trust behind: the officer's key still approves
    assert p.query("SELECT count(*) FROM audit WHERE kind = 'approver_trust'") == [(0,)]
    doc = p.cli_json("sync", "grown-ups", "--as-of", DAY, expect=3)
    assert {r["status"] for r in doc["results"] if r["destination"] != "file"} == {"blocked"}
    before = p.boxes.meta.members(ids["meta"])

    p.edit_toml(lambda t: t.replace(mine.public_base64, p.approver.public_base64).replace(
        f'"{mine.name}"', f'"{p.approver.name}"'))  # fmt: skip
    p.approve("grown-ups")
    assert p.cli_json("sync", "grown-ups", "--as-of", DAY)["results"][0]["status"] == "ok"
    assert p.boxes.meta.members(ids["meta"]) == meta_rows(p.confirmed("grown-ups", "meta"))
    assert before <= p.boxes.meta.members(ids["meta"])


def test_attack_copy_of_the_project_refills_a_taken_down_audience(
    make_project: Any, tmp_path: Path
) -> None:
    p = make_project(rows=3000)
    ids = live(p)
    copy = copy_of(p, tmp_path)
    done = p.cli_json("takedown", "grown-ups", "--by", "qa.officer")
    assert done["exit_code"] == 0
    assert p.boxes.meta.members(ids["meta"]) == set()

    # the copy's state never saw the takedown, and its approval is the officer's
    for args in (("sync", "grown-ups", "--full-refresh"), ("sync", "--all")):
        doc = copy.cli_json(*args, "--as-of", DAY, expect=3)
        ads = [r for r in doc["results"] if r["destination"] != "file"]
        assert {r["status"] for r in ads} == {"blocked"}, ads
        assert all("taken down" in r["error"] for r in ads)
    assert p.boxes.meta.members(ids["meta"]) == set()
    assert p.boxes.google.members(ids["google_ads"]) == frozenset()

    # a new approval, signed after the takedown by the officer, counts in any copy; the
    # copy's snapshot predates the takedown, so its audiences are replaced in full
    copy.approve("grown-ups")
    plans = json.dumps(copy.cli_json("plan", "grown-ups", "--as-of", DAY))
    assert plans.count("another state of this project") == 2, plans
    doc = copy.cli_json("sync", "grown-ups", "--as-of", DAY)
    assert {r["status"] for r in doc["results"]} == {"ok"}
    ads = [r for r in doc["results"] if r["destination"] != "file"]
    assert all("another state of this project" in (r["replaced"] or "") for r in ads), ads
    assert p.boxes.meta.members(ids["meta"]) == meta_rows(copy.confirmed("grown-ups", "meta"))


def test_attack_copy_of_the_project_keeps_a_revoked_approval(
    make_project: Any, tmp_path: Path
) -> None:
    p = make_project(rows=3000)
    ids = live(p)
    copy = copy_of(p, tmp_path)
    assert p.cli("revoke", "grown-ups", "--by", "qa.officer").exit_code == 0
    held = p.boxes.meta.members(ids["meta"])
    doc = copy.cli_json("sync", "grown-ups", "--full-refresh", "--as-of", DAY, expect=3)
    assert all("revoked" in r["error"] for r in doc["results"] if r["destination"] != "file")
    assert p.boxes.meta.members(ids["meta"]) <= held


def test_attack_copy_with_a_fresh_state_and_a_key_of_ones_own(
    make_project: Any, tmp_path: Path
) -> None:
    """The copy's state deleted, its own key listed: trust on first use for the copy's
    state, but not for the ad accounts the original released to."""
    p = make_project(rows=3000)
    live(p)
    copy = copy_of(p, tmp_path)
    shutil.rmtree(copy.root / ".audiences")
    mine = own_key(tmp_path)
    list_only(copy, mine)
    r = approve_with(copy, "grown-ups", mine)
    assert r.exit_code == 3 and "not trusted for" in r.stderr
    r = copy.cli("sync", "grown-ups", "--as-of", DAY)
    assert r.exit_code == 3


def test_a_new_ad_account_starts_its_own_trust(make_project: Any, tmp_path: Path) -> None:
    """Edge: trust on first use is per account, so another organisation's project (other
    accounts, its own officer) on the same OS account approves with its own key."""
    p = make_project(rows=3000)
    live(p)
    other = make_project(rows=3000, name="other", approve=False)
    mine = own_key(tmp_path, "other.officer")
    other.edit_toml(lambda t: t.replace("[approvers]", f'[approvers]\nkeys = {{ "{mine.name}" = '
                                        f'"{mine.public_base64}" }}', 1))  # fmt: skip
    other.edit_toml(lambda t: t.replace(_account(p), "act_424242"))
    other.edit_toml(lambda t: t.replace(_customer(p), "4242424242"))
    (other.root / "segments" / "grown-ups.yaml").write_text(
        (p.root / "segments" / "grown-ups.yaml").read_text()
    )
    r = approve_with(other, "grown-ups", mine)
    assert r.exit_code == 0, r.stderr
    # the same key is still refused for the first project's accounts
    mine_there = own_key(tmp_path, "third")
    third = copy_of(other, tmp_path, "third")
    third.edit_toml(lambda t: t.replace("act_424242", _account(p)))
    shutil.rmtree(third.root / ".audiences")
    list_only(third, mine_there)
    assert approve_with(third, "grown-ups", mine_there).exit_code == 3


def _account(p: Project) -> str:
    return str(p.config().destination("meta").model_extra["ad_account_id"])


def _customer(p: Project) -> str:
    return str(p.config().destination("google_ads").model_extra["customer_id"])


def test_approvers_added_in_one_state_are_trusted_for_its_accounts(
    make_project: Any, tmp_path: Path
) -> None:
    """The documented way to add an approver still works, and carries to the account's
    trust: a copy of the project with a fresh state can then use the new key."""
    p = make_project(rows=3000)
    live(p)
    deputy = own_key(tmp_path, "deputy")
    doc = p.cli_json(
        "approvers", "add", deputy.name, "--public", deputy.public_base64,
        "--by", p.approver.name, "--key", str(p.approver.private_key),
    )  # fmt: skip
    assert any(a.startswith("act_") for a in doc["accounts"])
    listed = p.cli_json("approvers", "list")["accounts"]
    meta = next(a for a in listed if a["destinations"] == ["meta"])
    assert {a["approver"] for a in meta["approvers"]} == {"qa.officer", "deputy"}
    assert "deputy" in p.cli("approvers", "list").stdout
    copy = copy_of(p, tmp_path)
    shutil.rmtree(copy.root / ".audiences")
    list_only(copy, deputy)
    assert approve_with(copy, "grown-ups", deputy).exit_code == 0
    # a self-made key signing an addition is refused for the account
    rogue, mine = own_key(tmp_path, "rogue"), own_key(tmp_path, "mine")
    fresh = copy_of(p, tmp_path, "fresh")
    shutil.rmtree(fresh.root / ".audiences")
    list_only(fresh, mine)
    r = fresh.cli(
        "approvers", "add", rogue.name, "--public", rogue.public_base64,
        "--by", mine.name, "--key", str(mine.private_key),
    )  # fmt: skip
    assert r.exit_code == 3, r.stderr


def test_attack_copy_releases_an_audience_one_person_from_the_originals(
    make_project: Any, tmp_path: Path
) -> None:
    """The copy's difference check must see what the original released after the copy
    was made: a second audience one person apart from the original's, on the same
    account, would tell the platform that person's membership."""
    from test_composition import write_segment

    p = make_project(rows=3000, pack="nightly-pack")  # k_diff 10
    write_segment(p.root, "ca", ["CA"])
    p.approve("ca")
    ca = p.release("ca", "meta", as_of=AS_OF)  # a plan: nothing released, the salt made
    (one,) = sorted(p.contact_ids(ca.members.head(1)))
    copy = copy_of(p, tmp_path)  # salt, approvals and all: it knows no release yet
    write_segment(p.root, "q", ["NY", "FL"])
    p.approve("q")
    assert p.cli("build", "q", "--as-of", DAY).exit_code == 0  # after the copy was made

    write_segment(copy.root, "q2", ["NY", "FL"], (one,))
    copy.approve("q2")  # the officer approves it in the copy
    attack = copy.cli("build", "q2", "--as-of", DAY)
    out = attack.stdout + attack.stderr
    assert attack.exit_code == 3, out
    assert "blocked q2: difference [meta]" in out and one not in out
    # and the other way round: the original sees the copy's releases
    write_segment(copy.root, "ny", ["NY"])
    copy.approve("ny")
    assert copy.cli("build", "ny", "--as-of", DAY).exit_code == 0
    write_segment(p.root, "ny2", ["NY"], (one,))
    p.approve("ny2")
    assert p.cli("build", "ny2", "--as-of", DAY).exit_code == 3


def test_attack_review_as_an_oracle_for_one_persons_membership(
    make_project: Any, tmp_path: Path
) -> None:
    """A marketer reviews an unapproved segment: a base of k - 1 people or'ed with a
    named person's diagnosis. `review` ran the whole gate and wrote exact figures, so
    its verdict (min-size) and its counts told whether that person has the diagnosis.
    A review is for approvers now: refused before any data is read."""
    from test_composition import write_segment

    p = make_project(rows=3000, pack="nightly-pack")
    write_segment(p.root, "probe", ["NY"], ("C0000042",))
    for args in ((), ("--by", "marketer"), *[("--by", k.name, "--key", str(k.private_key))
                                              for k in [own_key(tmp_path)]]):  # fmt: skip
        r = p.cli("review", "probe", "--as-of", DAY, *args)
        assert r.exit_code == 3, (args, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr and r.stderr.count("\n") <= 2
        assert "reviewed" not in r.stdout and "candidates" not in r.stdout
    assert _reviews(p) == 0  # nothing recorded
    assert not list((p.root / ".audiences" / "reports").glob("v-*"))
    officer = ("--by", p.approver.name, "--key", str(p.approver.private_key))
    assert p.cli("review", "probe", "--as-of", DAY, *officer).exit_code in (0, 3)
    assert list((p.root / ".audiences" / "reports").glob("v-*")) and _reviews(p) == 1


def test_attack_an_endpoint_written_out_is_the_same_account(
    make_project: Any, tmp_path: Path
) -> None:
    """After deleting the state and listing a key of one's own, write the platform's
    address out as the destinations' endpoints, hoping for a 'new' account."""
    import re

    p = make_project(rows=3000)
    live(p)
    mine = own_key(tmp_path)
    delete_state_db(p)
    list_only(p, mine)
    p.edit_toml(lambda t: re.sub(r'(?m)^endpoint = "http://[^"]*"',
                                 'endpoint = "https://graph.facebook.com"', t))  # fmt: skip
    p.edit_toml(lambda t: re.sub(r'(?m)^endpoint = "(?!https://)[^"]*"',
                                 'endpoint = "googleads.googleapis.com:443"', t))  # fmt: skip
    assert "graph.facebook.com" in p.toml.read_text() and "127.0.0.1" not in p.toml.read_text()
    # the file destination out of the way: only the ad accounts decide
    segment = p.root / "segments" / "grown-ups.yaml"
    segment.write_text(
        segment.read_text().replace("[meta, google_ads, file]", "[meta, google_ads]")
    )
    p.edit_toml(lambda t: re.sub(r"(?ms)^\[destinations\.file\]\n.*?(?=^\[)", "", t))
    assert "file" not in p.config().destinations
    r = approve_with(p, "grown-ups", mine)
    assert r.exit_code == 3 and "not trusted for" in r.stderr, r.stderr


# ------------------------------------------- the second review (2026-12-07): six findings
def _pack(p: Project, pack: str) -> None:
    import re

    p.edit_toml(lambda t: re.sub(r'(?m)^pack = ".*?"', f'pack = "{pack}"', t))


def test_attack_a_pack_without_approval_and_a_new_name(make_project: Any, tmp_path: Path) -> None:
    """Revoke and take down; then `baseline` (no approval required) and the segment under
    a new name, in the project (after `state adopt`) and in a copy with no state: once an
    officer governs an account, every release to it needs their approval."""
    p = make_project(rows=3000)
    ids = live(p)
    assert p.cli("revoke", "grown-ups", "--by", "qa.officer", "--takedown").exit_code == 0
    seg = p.root / "segments" / "grown-ups.yaml"
    renamed = seg.read_text().replace("name: grown-ups", "name: adults-en")
    copy = copy_of(p, tmp_path)
    shutil.rmtree(copy.root / ".audiences")
    shutil.copytree(p.root / ".audiences" / "sandbox", copy.root / ".audiences" / "sandbox")
    for project in (p, copy):
        _pack(project, "baseline")
        (project.root / "segments" / "adults-en.yaml").write_text(renamed)
        (project.root / "segments" / "grown-ups.yaml").unlink()
        r = project.cli("sync", "adults-en", "--as-of", DAY)
        assert r.exit_code == 3, (r.stdout, r.stderr)
        assert "not approved" in r.stdout + r.stderr
        assert not project.query("SELECT 1 FROM audiences_remote WHERE segment='adults-en'")
    assert p.boxes.meta.members(ids["meta"]) == set()
    assert not list(copy.root.joinpath("exports").rglob("members.csv"))
    # a pack of one's own with a weaker difference rule: the same refusal
    (p.root / "policies" / "mine.yaml").write_text(
        "name: mine\nversion: '1'\nextends: baseline\nrules:\n  - id: difference\n"
        "    severity: warn\n    params: {k_diff: 2, on_small_change: hold}\n"
    )
    _pack(p, "policies/mine.yaml")
    assert p.cli("sync", "adults-en", "--as-of", DAY).exit_code == 3


def test_attack_a_segment_without_destinations_is_an_oracle(make_project: Any) -> None:
    """`destinations: []` skipped the approval and ran the gate, for the report's exact
    candidate count (362 or 363 with a named person's diagnosis)."""
    from test_composition import write_segment

    p = make_project(rows=3000)
    write_segment(p.root, "probe", ["NY"], ("C0000042",))
    seg = p.root / "segments" / "probe.yaml"
    seg.write_text(seg.read_text().replace("destinations: [meta]", "destinations: []"))
    for args in (("build", "probe"), ("plan", "probe")):
        r = p.cli(*args, "--as-of", DAY)
        assert r.exit_code == 3 and "lists no destinations" in r.stdout + r.stderr
    reports = p.root / ".audiences" / "reports"
    for report in reports.glob("*.json") if reports.exists() else []:  # blocked before any row
        assert json.loads(report.read_text())["figures"].get("candidates", 0) == 0


def test_attack_a_backup_holding_an_older_approval_of_a_revoked_segment(
    make_project: Any, tmp_path: Path
) -> None:
    """Approved (A1), backed up, approved again (A2), revoked (A2's signature): the restored
    backup holds A1, never revoked by signature — revoked all the same."""
    p = make_project(rows=3000)
    live(p)
    archive = tmp_path / "nightly.tar"
    p.cli_json("state", "backup", "--out", str(archive))
    p.approve("grown-ups")
    assert p.cli("revoke", "grown-ups", "--by", "qa.officer").exit_code == 0
    restored = p.cli_json("state", "restore", str(archive))
    assert [r["segment"] for r in restored["revoked_again"]] == ["grown-ups"]
    doc = p.cli_json("sync", "grown-ups", "--full-refresh", "--as-of", DAY, expect=3)
    assert {r["status"] for r in doc["results"] if r["destination"] != "file"} == {"blocked"}


def test_a_file_takedown_leaves_the_audience_record_true(make_project: Any) -> None:
    """The file takedown forgot to rewrite the audience record: every later sync and plan
    of the project stopped (exit 1) until `state adopt`, forced removals included."""
    p = make_project(rows=3000, segments=("older-adults",))
    live(p)
    assert p.cli_json("takedown", "grown-ups", "--by", "qa.officer")["exit_code"] == 0
    for args in (("sync", "older-adults"), ("sync", "--all"), ("plan", "older-adults")):
        r = p.cli(*args, "--as-of", DAY)  # (the gate may block older-adults: exit 3)
        assert r.exit_code in (0, 3), (args, r.stderr)
        assert "audiences.manifest.json" not in r.stdout + r.stderr


def test_attack_copy_made_before_a_takedown_writes_the_file_export(
    make_project: Any, tmp_path: Path
) -> None:
    p = make_project(rows=3000)
    live(p)
    copy = copy_of(p, tmp_path)
    assert p.cli_json("takedown", "grown-ups", "--by", "qa.officer")["exit_code"] == 0
    shutil.rmtree(copy.root / "exports")
    r = copy.cli("build", "grown-ups", "--as-of", DAY)
    assert r.exit_code == 3 and "taken down" in r.stdout + r.stderr
    assert not list(copy.root.joinpath("exports").rglob("members.csv"))


def test_attack_the_same_account_spelled_another_way(make_project: Any, tmp_path: Path) -> None:
    """A fresh copy with a key of one's own, the governed account written with leading
    zeros: the same account (look-alike digits are refused; `audiences.toml` refuses an
    id without `act_` or with spaces already)."""
    spelled = "act_00{n}"
    import re

    p = make_project(rows=3000)
    live(p)
    number = _account(p).removeprefix("act_")
    copy = copy_of(p, tmp_path)
    shutil.rmtree(copy.root / ".audiences")
    mine = own_key(tmp_path)
    list_only(copy, mine)
    segment = copy.root / "segments" / "grown-ups.yaml"
    segment.write_text(segment.read_text().replace("[meta, google_ads, file]", "[meta]"))
    for d in ("file", "google", "google_ads"):
        copy.edit_toml(lambda t, d=d: re.sub(rf"(?ms)^\[destinations\.{d}\]\n.*?(?=^\[)", "", t))
    copy.edit_toml(lambda t: t.replace(f'"{_account(p)}"', f'"{spelled.format(n=number)}"'))
    r = approve_with(copy, "grown-ups", mine)
    assert r.exit_code == 3 and "not trusted for act_" in r.stderr, r.stderr
    arabic = "".join(chr(0x660 + int(c)) for c in number)
    copy.edit_toml(lambda t: t.replace(f'"{spelled.format(n=number)}"', f'"act_{arabic}"'))
    r = approve_with(copy, "grown-ups", mine)
    assert r.exit_code != 0 and "ASCII" in r.stderr and "Traceback" not in r.stderr, r.stderr


# --------------------------------------- the third review (2026-12-07): five more findings
def test_attack_an_unsigned_approvals_row_lifts_a_takedown(make_project: Any) -> None:
    """A row inserted under the real approval (id 0, `at` in 2999, no valid signature):
    the takedown check read max(at) of every unrevoked row, never verified."""
    p = make_project(rows=3000)
    ids = live(p)
    assert p.cli_json("takedown", "grown-ups", "--by", "qa.officer")["exit_code"] == 0
    conn = sqlite3.connect(p.state_db)
    conn.execute(
        "INSERT INTO approvals(id, segment, segment_digest, policy_digest, destinations, "
        "approver, key_id, signature, payload, note, definition, at) "
        "SELECT 0, segment, segment_digest, policy_digest, destinations, approver, key_id, "
        "'x', '{}', note, definition, '2999-01-01T00:00:00.000000Z' FROM approvals "
        "WHERE segment = 'grown-ups' ORDER BY id DESC LIMIT 1"
    )
    conn.commit()
    conn.close()
    doc = p.cli_json("sync", "grown-ups", "--as-of", DAY, expect=3)
    assert {r["status"] for r in doc["results"]} == {"blocked"}, doc["results"]
    assert p.boxes.meta.members(ids["meta"]) == set()
    assert not list((p.root / "exports").rglob("members.csv"))


def test_attack_the_same_account_with_leading_zeros_in_the_difference_check(
    make_project: Any,
) -> None:
    """A second Meta destination on the governed account written `act_0…`: the difference
    check compared it with nothing, so an audience one person apart went out."""
    import re

    from test_composition import write_segment

    p = make_project(rows=3000, pack="nightly-pack")  # k_diff 10
    acct = _account(p)
    zero = "act_0" + acct.removeprefix("act_")
    block = re.search(r"(?ms)^\[destinations\.meta\]\n.*?(?=^\[)", p.toml.read_text())
    assert block is not None
    p.edit_toml(lambda t: t + "\n" + block.group(0).replace(
        "[destinations.meta]", "[destinations.meta0]").replace(acct, zero))  # fmt: skip
    write_segment(p.root, "ca", ["CA"])
    p.approve("ca")
    (one,) = sorted(p.contact_ids(p.release("ca", "meta", as_of=AS_OF).members.head(1)))
    write_segment(p.root, "q", ["NY", "FL"])
    p.approve("q")
    assert p.cli("build", "q", "--as-of", DAY).exit_code == 0
    write_segment(p.root, "q2", ["NY", "FL"], (one,))
    seg = p.root / "segments" / "q2.yaml"
    seg.write_text(seg.read_text().replace("destinations: [meta]", "destinations: [meta0]"))
    p.approve("q2")
    attack = p.cli("build", "q2", "--as-of", DAY)
    assert attack.exit_code == 3 and "difference" in attack.stdout + attack.stderr


def test_attack_the_governed_export_folder_spelled_another_way(make_project: Any) -> None:
    """After revoke + takedown: `baseline`, a new segment name, and a file destination
    `./exports` (the same folder, a new spelling) or any new folder."""
    p = make_project(rows=3000)
    live(p)
    assert p.cli("revoke", "grown-ups", "--by", "qa.officer", "--takedown").exit_code == 0
    _pack(p, "baseline")
    for name, folder in (("drop", "./exports"), ("scratch", "scratch")):
        p.edit_toml(lambda t, n=name, f=folder: t + f'\n[destinations.{n}]\nkind = "file"\n'
                    f'path = "{f}"\nformats = ["csv"]\n')  # fmt: skip
        seg = (p.root / "segments" / "grown-ups.yaml").read_text()
        (p.root / "segments" / f"to-{name}.yaml").write_text(
            seg.replace("name: grown-ups", f"name: to-{name}").replace(
                "[meta, google_ads, file]", f"[{name}]"))  # fmt: skip
        r = p.cli("build", f"to-{name}", "--as-of", DAY)
        assert r.exit_code == 3 and "not approved" in r.stdout + r.stderr, (r.stdout, r.stderr)
        # nor is it a review for anyone: the exact-count oracle of an ungoverned folder
        r = p.cli("review", f"to-{name}", "--as-of", DAY)
        assert r.exit_code == 3 and "for its approvers" in r.stderr
    assert not list(p.root.rglob("members.csv"))


def test_attack_an_older_approval_in_a_backup_with_a_fresh_salt(
    make_project: Any, tmp_path: Path
) -> None:
    """A1, backup, A2, revoke (A2); then a copy whose salt is new (deleted), holding the
    backup's state.db with A1: revocations by segment were keyed by salt."""
    import tarfile

    p = make_project(rows=3000)
    ids = live(p)
    archive = tmp_path / "nightly.tar"
    p.cli_json("state", "backup", "--out", str(archive))
    p.approve("grown-ups")
    assert p.cli("revoke", "grown-ups", "--by", "qa.officer").exit_code == 0
    held = p.boxes.meta.members(ids["meta"])
    copy = copy_of(p, tmp_path)
    state = copy.root / ".audiences"
    for name in ("state.db", "state.db-wal", "state.db-shm", "salt",
                 "audiences.manifest.json", "record.key"):  # fmt: skip
        (state / name).unlink(missing_ok=True)
    with tarfile.open(archive) as tar:
        tar.extract("state.db", state, filter="data")
    copy.cli("state", "repair")  # as the first sync's error says (a new record.key)
    doc = copy.cli_json("sync", "grown-ups", "--as-of", DAY, expect=3)
    ads = [r for r in doc["results"] if r["destination"] != "file"]
    assert {r["status"] for r in ads} == {"blocked"} and all("revoked" in r["error"] for r in ads)
    assert p.boxes.meta.members(ids["meta"]) <= held


def test_a_custody_store_that_cannot_be_opened_stops_everything(make_project: Any) -> None:
    """Fail closed: an unknown custody is never taken for an empty one."""
    from policies.privacy import ledger

    p = make_project(rows=3000)
    ids = live(p)
    assert p.cli_json("takedown", "grown-ups", "--by", "qa.officer")["exit_code"] == 0
    home = ledger.ledger_home()
    for name in ("custody.sqlite", "custody.sqlite-wal", "custody.sqlite-shm"):
        (home / name).unlink(missing_ok=True)
    (home / "custody.sqlite").mkdir()  # (as root, a mode does not stop a write)
    _pack(p, "baseline")
    seg = (p.root / "segments" / "grown-ups.yaml").read_text()
    (p.root / "segments" / "adults-en.yaml").write_text(seg.replace("grown-ups", "adults-en"))
    for args in (("sync", "grown-ups"), ("sync", "adults-en"), ("sync", "--all")):
        r = p.cli(*args, "--as-of", DAY)
        assert r.exit_code != 0 and "Traceback" not in r.stderr
    assert p.boxes.meta.members(ids["meta"]) == set()


def test_cron_skips_a_never_approved_segment_of_a_governed_project(make_project: Any) -> None:
    """Under `baseline` (no approval required by the pack) a project with approvers needs an
    approval for every segment: the nightly run skips one never approved, as under
    `hipaa-marketing`, and says why, instead of building it to block every night."""
    p = make_project(rows=3000)
    _pack(p, "baseline")
    live(p)  # grown-ups approved under baseline: the project now has approvers
    seg = (p.root / "segments" / "grown-ups.yaml").read_text()
    (p.root / "segments" / "adults-en.yaml").write_text(seg.replace("grown-ups", "adults-en"))
    doc = p.cli_json("sync", "--all", "--as-of", DAY)
    by = {(r["segment"], r["destination"]): r for r in doc["results"]}
    assert by[("adults-en", "meta")]["status"] == "skipped"
    assert by[("adults-en", "meta")]["error"] == "not approved"
    assert by[("grown-ups", "meta")]["status"] == "ok"


def test_a_restore_across_a_key_rotation_keeps_the_new_approvers(
    make_project: Any, tmp_path: Path
) -> None:
    """Legitimate: backup; a deputy added, the officer removed (a rotation); then the older
    backup restored after a disk loss. Custody held the rotation, the restored chain did
    not: no key was trusted by both, and nothing could be approved again."""
    p = make_project(rows=3000)
    live(p)
    archive = tmp_path / "before-rotation.tar"
    p.cli_json("state", "backup", "--out", str(archive))
    deputy = own_key(tmp_path, "deputy")
    officer = ("--by", p.approver.name, "--key", str(p.approver.private_key))
    assert p.cli("approvers", "add", "deputy", "--public", deputy.public_base64, *officer
                 ).exit_code == 0  # fmt: skip
    assert p.cli("approvers", "remove", p.approver.name, "--by", "deputy", "--key",
                 str(deputy.private_key)).exit_code == 0  # fmt: skip
    stale = approve_with(p, "grown-ups", deputy)  # the file still lists the removed officer
    assert stale.exit_code == 3 and f"{p.approver.name} was removed by deputy" in stale.stderr
    assert f"take {p.approver.name}'s key out of [approvers] keys" in stale.stderr
    list_only(p, deputy)
    assert approve_with(p, "grown-ups", deputy).exit_code == 0
    restored = p.cli_json("state", "restore", str(archive))
    assert restored["approver_changes_again"] == ["add deputy", f"remove {p.approver.name}"]
    trusted = {a["approver"] for a in p.cli_json("approvers", "list")["approvers"]}
    assert trusted == {"deputy"}
    assert approve_with(p, "grown-ups", deputy).exit_code == 0
    assert p.cli("sync", "grown-ups", "--as-of", DAY).exit_code == 0
    assert approve_with(p, "grown-ups", p.approver).exit_code == 3  # still removed
    # the checkpoints the removed officer signed while trusted still verify
    verified = p.cli("audit", "verify")
    assert verified.exit_code == 0, verified.stderr


@pytest.mark.parametrize("second", ["./exports2", "elsewhere"])
def test_attack_file_exports_one_person_apart_in_two_folders(
    make_project: Any, second: str
) -> None:
    """Two file destinations, the same folder spelled twice (or two folders): exports one
    person apart, both readable by the marketer, told that person's membership. Every
    file destination of a project is one account for the difference check."""
    from test_composition import write_segment

    p = make_project(rows=3000, pack="nightly-pack")  # k_diff 10
    for name, folder in (("fa", "exports2"), ("fb", second)):
        p.edit_toml(lambda t, n=name, f=folder: t + f'\n[destinations.{n}]\nkind = "file"\n'
                    f'path = "{f}"\nformats = ["csv"]\n')  # fmt: skip
    write_segment(p.root, "ca", ["CA"])
    p.approve("ca")
    (one,) = sorted(p.contact_ids(p.release("ca", "meta", as_of=AS_OF).members.head(1)))
    for name, ids, dest in (("q", (), "fa"), ("q2", (one,), "fb")):
        write_segment(p.root, name, ["NY", "FL"], ids)
        seg = p.root / "segments" / f"{name}.yaml"
        seg.write_text(seg.read_text().replace("destinations: [meta]", f"destinations: [{dest}]"))
        p.approve(name)
    assert p.cli("build", "q", "--as-of", DAY).exit_code == 0
    attack = p.cli("build", "q2", "--as-of", DAY)
    assert attack.exit_code == 3 and "difference [fb]" in attack.stdout + attack.stderr
    assert len(list(p.root.rglob("members.csv"))) == 1
