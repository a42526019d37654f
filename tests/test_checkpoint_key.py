"""A checkpoint-only key for the scheduled job (``approvers add --checkpoints-only``): it
signs audit checkpoints (``sync --checkpoint-key``, ``audit checkpoint``) and nothing
else. Before it, the documented cron key was an approver key: whoever read it from the
service account's files could approve a segment. Each attack below is what a marketer
holding that key would try, with documented commands, against the sandboxes on 127.0.0.1.
"""

from __future__ import annotations

import re
import shlex
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import AS_OF, Approver, Project, frozen_clock
from test_custody import list_only, own_key

DAY = AS_OF.isoformat()
DOC = Path(__file__).parent.parent / "docs" / "compliance-workflow.md"


@pytest.fixture(scope="module", autouse=True)
def _stopped_clock() -> Iterator[None]:
    """The sample data is fixed on AS_OF: the wall clock stops there (in this process)."""
    with frozen_clock(AS_OF):
        yield


def documented_lines() -> list[list[str]]:
    """The fenced block of docs/compliance-workflow.md that makes the cron key."""
    text = DOC.read_text(encoding="utf-8")
    (block,) = re.findall(
        r"^```\n(audiences keygen --private /etc/audiences/cron\.key.*?)^```$",
        text,
        re.DOTALL | re.MULTILINE,
    )
    return [shlex.split(line) for line in block.splitlines() if line.strip()]


def add_cron_as_documented(p: Project, tmp_path: Path) -> Approver:
    """Run the page's lines as written; substitute only what the officer fills in (the key
    paths, the officer's name, the new public key)."""
    cron_key = tmp_path / "etc" / "cron.key"
    cron_key.parent.mkdir()
    keygen, add = documented_lines()
    assert keygen[:2] == ["audiences", "keygen"] and add[:3] == ["audiences", "approvers", "add"]
    argv = [str(cron_key) if a == "/etc/audiences/cron.key" else a for a in keygen[1:]]
    made = p.cli_json(*argv)
    assert Path(made["private"]) == cron_key
    fill = {
        "BASE64": made["public_base64"],
        "alice": p.approver.name,
        "~/.audiences/alice.key": str(p.approver.private_key),
    }
    r = p.cli(*[fill.get(a, a) for a in add[1:]])
    assert r.exit_code == 0, r.stderr
    assert "signs audit checkpoints only" in p.cli("approvers", "list").stdout
    return Approver("cron", cron_key, made["public_base64"])


def second_segment(p: Project) -> None:
    """A segment no one approved ("wider": all-adults under another name)."""
    text = (p.root / "segments" / "all-adults.yaml").read_text(encoding="utf-8")
    wider = re.sub(r"(?m)^name: .*$", "name: wider", text)
    assert wider != text
    (p.root / "segments" / "wider.yaml").write_text(wider, encoding="utf-8")


def test_documented_cron_key_signs_checkpoints_that_verify(
    make_project: Any, tmp_path: Path
) -> None:
    p = make_project(rows=3000, segments=("all-adults",))
    cron = add_cron_as_documented(p, tmp_path)
    listed = p.cli_json("approvers", "list")
    assert [k["name"] for k in listed["checkpoint_keys"]] == ["cron"]
    assert [a["approver"] for a in listed["approvers"]] == [p.approver.name]
    # custody carried the change to the pinned accounts, but not as an approver
    pinned = [a for a in listed["accounts"] if a["approvers"] is not None]
    assert pinned
    for account in pinned:
        assert [a["approver"] for a in account["approvers"]] == [p.approver.name]

    before = p.cli_json("audit", "verify")
    doc = p.cli_json("sync", "--all", "--checkpoint-key", str(cron.private_key))
    assert {r["status"] for r in doc["results"]} == {"ok"}
    after = p.cli_json("audit", "verify")
    assert after["ok"] and after["checkpoints"] == before["checkpoints"] + 1
    ((kind,),) = p.query("SELECT kind FROM audit ORDER BY seq DESC LIMIT 1")
    assert kind == "checkpoint"
    r = p.cli("audit", "checkpoint", "--key", str(cron.private_key), "--by", "cron")
    assert r.exit_code == 0, r.stderr
    assert p.cli_json("audit", "verify")["checkpoints"] == after["checkpoints"] + 1


def test_attack_the_cron_key_cannot_approve_review_or_add_approvers(
    make_project: Any, tmp_path: Path
) -> None:
    p = make_project(rows=3000, segments=("all-adults",))
    cron = add_cron_as_documented(p, tmp_path)
    second_segment(p)
    key = str(cron.private_key)

    r = p.cli("approve", "wider", "--by", "cron", "--key", key)
    assert r.exit_code == 3 and "not a trusted approver" in r.stderr
    r = p.cli("review", "wider", "--by", "cron", "--key", key)
    assert r.exit_code == 3
    mallory = own_key(tmp_path, "mallory")
    r = p.cli("approvers", "add", "mallory", "--public", mallory.public_base64,
              "--by", "cron", "--key", key)  # fmt: skip
    assert r.exit_code == 3 and "not a trusted approver" in r.stderr
    # nor may it promote itself, or sign a checkpoint-only key of one's own
    r = p.cli("approvers", "add", "cron", "--public", cron.public_base64, "--by", "cron",
              "--key", key)  # fmt: skip
    assert r.exit_code == 3
    r = p.cli("approvers", "add", "m2", "--checkpoints-only", "--public",
              mallory.public_base64, "--by", "cron", "--key", key)  # fmt: skip
    assert r.exit_code == 3
    assert p.query("SELECT count(*) FROM approvals WHERE segment = 'wider'") == [(0,)]
    assert [a["approver"] for a in p.cli_json("approvers", "list")["approvers"]] == [
        p.approver.name
    ]


def test_attack_listing_the_cron_key_as_an_approver_in_the_toml(
    make_project: Any, tmp_path: Path
) -> None:
    p = make_project(rows=3000, segments=("all-adults",))
    cron = add_cron_as_documented(p, tmp_path)
    second_segment(p)
    list_only(p, cron)
    r = p.cli("approve", "wider", "--by", "cron", "--key", str(cron.private_key))
    assert r.exit_code == 3
    assert "checkpoint-only key" in r.stderr and "never approves" in r.stderr
    assert p.query("SELECT count(*) FROM approvals WHERE segment = 'wider'") == [(0,)]


def test_attack_relabelled_entry_does_not_make_the_cron_key_an_approver(
    make_project: Any, tmp_path: Path
) -> None:
    """The signed ``checkpoint_key_add`` row edited to read ``approver_add``: the kind is
    part of what the officer signed, so the change no longer verifies, and nothing trusts
    the key (the approval is refused; it does not count as a removal either)."""
    p = make_project(rows=3000, segments=("all-adults",))
    cron = add_cron_as_documented(p, tmp_path)
    second_segment(p)
    conn = sqlite3.connect(p.state_db)
    with conn:
        conn.execute("UPDATE audit SET kind = 'approver_add' WHERE kind = 'checkpoint_key_add'")
    conn.close()
    r = p.cli("approve", "wider", "--by", "cron", "--key", str(cron.private_key))
    assert r.exit_code == 3 and "does not verify" in r.stderr
    assert p.query("SELECT count(*) FROM approvals WHERE segment = 'wider'") == [(0,)]


def test_replay_refuses_a_relabelled_or_unknown_change(approver: Approver, tmp_path: Path) -> None:
    from audiences.compliance import custody
    from audiences.compliance.keys import load_private_key
    from audiences.core.errors import ApprovalError

    officer = load_private_key(approver.private_key)
    cron = own_key(tmp_path, "cron")
    kid = custody.key_id(officer.public_key())

    def change(kind: str, signed_as: str) -> custody.TrustEntry:
        payload = custody.change_payload(signed_as, "cron", cron.public_base64, "qa", kid)
        import base64

        sig = base64.b64encode(officer.sign(payload)).decode()
        details = {"public": cron.public_base64, "by": "qa", "by_key": kid, "signature": sig}
        return custody.TrustEntry(kind, "cron", details, DAY, "test entry")

    first = custody.TrustEntry(
        custody.TRUST_KIND, "approvers", {"keys": {"qa": approver.public_base64}}, DAY, "first"
    )
    good = change(custody.CHECKPOINT_ADD_KIND, custody.CHECKPOINT_ADD_KIND)
    approvers_, checkpointers = custody.replay_roles([first, good], broken="x")
    assert set(approvers_) == {"qa"} and set(checkpointers) == {"cron"}
    with pytest.raises(ApprovalError, match="does not verify"):
        custody.replay([first, change(custody.ADD_KIND, custody.CHECKPOINT_ADD_KIND)], broken="x")
    with pytest.raises(ApprovalError, match="unknown approver change"):
        custody.replay([first, change("approver_promote", "approver_promote")], broken="x")
    removed = change(custody.CHECKPOINT_REMOVE_KIND, custody.CHECKPOINT_REMOVE_KIND)
    assert custody.replay_roles([first, good, removed], broken="x") == (approvers_, {})


def test_a_key_that_is_no_signer_is_refused_before_the_sync_sends_anything(
    make_project: Any, tmp_path: Path
) -> None:
    p = make_project(rows=3000, segments=("all-adults",))
    stranger = own_key(tmp_path, "stranger")
    ((batches,),) = p.query("SELECT count(*) FROM audit WHERE kind = 'sync_batch'")
    r = p.cli("sync", "--all", "--checkpoint-key", str(stranger.private_key))
    assert r.exit_code == 3
    assert "is not a trusted approver or checkpoint key" in r.stderr
    assert "approvers add NAME --checkpoints-only" in r.stderr
    assert "Traceback" not in r.stderr
    assert p.query("SELECT count(*) FROM audit WHERE kind = 'sync_batch'") == [(batches,)]
    assert p.query("SELECT count(*) FROM audit_checkpoints WHERE key_id != ''") == p.query(
        "SELECT count(*) FROM audit WHERE kind = 'checkpoint'"
    )
    r = p.cli("audit", "checkpoint", "--key", str(stranger.private_key))
    assert r.exit_code == 3
    assert p.cli_json("audit", "verify")["ok"]


def test_removed_cron_key_signs_no_more_and_its_old_checkpoints_still_verify(
    make_project: Any, tmp_path: Path
) -> None:
    p = make_project(rows=3000, segments=("all-adults",))
    cron = add_cron_as_documented(p, tmp_path)
    key = str(cron.private_key)
    p.cli_json("sync", "--all", "--checkpoint-key", key)
    r = p.cli("approvers", "remove", "cron", "--by", p.approver.name,
              "--key", str(p.approver.private_key))  # fmt: skip
    assert r.exit_code == 0, r.stderr
    assert p.query("SELECT count(*) FROM audit WHERE kind = 'checkpoint_key_remove'") == [(1,)]
    assert p.cli_json("approvers", "list")["checkpoint_keys"] == []
    assert p.cli_json("audit", "verify")["ok"]  # signed while trusted: still verifies
    r = p.cli("sync", "--all", "--checkpoint-key", key)
    assert r.exit_code == 3 and "not a trusted approver or checkpoint key" in r.stderr
    # signed after the removal anyway (the library, no check): verify rejects it
    from audiences.compliance import audit
    from audiences.compliance.keys import load_private_key

    conn = sqlite3.connect(p.state_db)
    audit.checkpoint(conn, load_private_key(cron.private_key), actor="cron")
    conn.close()
    doc = p.cli_json("audit", "verify", expect=1)
    assert any("was not a trusted approver key at that entry" in x for x in doc["problems"])


def test_a_name_and_a_key_have_one_role(make_project: Any, tmp_path: Path) -> None:
    p = make_project(rows=3000, segments=("all-adults",))
    cron = add_cron_as_documented(p, tmp_path)
    officer = ("--by", p.approver.name, "--key", str(p.approver.private_key))
    # the officer's own key as a checkpoint key (under another name), and the other way round
    r = p.cli("approvers", "add", "cp2", "--checkpoints-only", "--public",
              p.approver.public_base64, *officer)  # fmt: skip
    assert r.exit_code == 3 and "already an approver" in r.stderr
    r = p.cli("approvers", "add", "cron", "--public", cron.public_base64, *officer)
    assert r.exit_code == 3 and "already a checkpoint-only key" in r.stderr
    r = p.cli("approvers", "add", "ops", "--public", cron.public_base64, *officer)
    assert r.exit_code == 3 and "remove 'cron' first" in r.stderr
    assert p.cli_json("approvers", "list")["approvers"][0]["approver"] == p.approver.name
