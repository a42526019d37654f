"""Signed approvals: keygen, approve, revoke, and every way an approval stops counting."""

from __future__ import annotations

import hashlib
import sqlite3
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from audiences.compliance import approvals, audit
from audiences.compliance import keys as signing_keys
from audiences.compliance.keys import SigningKeyError
from audiences.core.errors import EXIT_BLOCKED, ApprovalError

DDL = """
CREATE TABLE approvals (
  id INTEGER PRIMARY KEY AUTOINCREMENT, segment TEXT NOT NULL, segment_digest TEXT NOT NULL,
  policy_digest TEXT NOT NULL, destinations TEXT NOT NULL, approver TEXT NOT NULL,
  key_id TEXT NOT NULL, signature TEXT NOT NULL, payload TEXT NOT NULL, note TEXT,
  definition TEXT NOT NULL, at TEXT NOT NULL, revoked_at TEXT, revoked_by TEXT
);
CREATE INDEX approvals_segment ON approvals(segment);
CREATE TABLE audit (
  seq INTEGER PRIMARY KEY, at TEXT NOT NULL, actor TEXT NOT NULL, kind TEXT NOT NULL,
  subject TEXT NOT NULL, details TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL
);
CREATE TABLE audit_checkpoints (
  id INTEGER PRIMARY KEY AUTOINCREMENT, seq INTEGER NOT NULL, hash TEXT NOT NULL,
  key_id TEXT NOT NULL, signature TEXT NOT NULL, at TEXT NOT NULL
);
"""

DEFINITION = """\
name: diabetes-outreach
where:
  all:
    - age: {between: [40, 75]}
    - service_lines: {contains: endocrinology}
exclude_if:
  - do_not_contact: true
"""
EDITED = DEFINITION.replace("[40, 75]", "[18, 75]")
POLICY = "p" * 64
DESTS = ["meta_main", "file_export"]


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Keys:
    alice: Path
    bob: Path
    mallory: Path
    trusted: dict[str, str]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    home = tmp_path_factory.mktemp("keys")
    pairs = {
        name: signing_keys.generate_keypair(home / f"{name}.key", home / f"{name}.pub")
        for name in ("alice", "bob", "mallory")
    }
    trusted = {
        "alice": pairs["alice"].public_path.read_text(),  # PEM
        "bob": pairs["bob"].public_base64,  # raw base64
    }
    return Keys(
        pairs["alice"].private_path,
        pairs["bob"].private_path,
        pairs["mallory"].private_path,
        trusted,
    )


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(DDL)
    yield db
    db.close()


def approve(conn: sqlite3.Connection, keys: Keys, **overrides: object) -> approvals.Approval:
    args: dict[str, object] = {
        "segment_name": "diabetes-outreach",
        "segment_digest": digest(DEFINITION),
        "policy_digest": POLICY,
        "destinations": DESTS,
        "definition_text": DEFINITION,
        "approver": "alice",
        "private_key_path": keys.alice,
        "trusted_keys": keys.trusted,
        "note": "reviewed with legal",
    }
    args.update(overrides)
    return approvals.approve(conn, **args)  # type: ignore[arg-type]


def check(conn: sqlite3.Connection, keys: Keys, **overrides: object) -> approvals.Approval:
    args: dict[str, object] = {
        "segment_name": "diabetes-outreach",
        "segment_digest": digest(DEFINITION),
        "policy_digest": POLICY,
        "destinations": list(reversed(DESTS)),
        "definition_text": DEFINITION,
        "trusted_keys": keys.trusted,
    }
    args.update(overrides)
    return approvals.check_approval(conn, **args)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- keys


def test_keygen_writes_a_private_0600_key_and_never_overwrites(tmp_path: Path) -> None:
    pair = signing_keys.generate_keypair(tmp_path / "k" / "ann.key", tmp_path / "ann.pub")
    assert stat.S_IMODE(pair.private_path.stat().st_mode) == 0o600
    assert pair.public_path.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    private = signing_keys.load_private_key(pair.private_path)
    assert signing_keys.key_id(private.public_key()) == pair.key_id
    assert len(pair.key_id) == 16
    assert signing_keys.key_id(signing_keys.load_public_key(pair.public_base64)) == pair.key_id
    before = pair.private_path.read_bytes()
    with pytest.raises(SigningKeyError, match="already exists; keygen never overwrites"):
        signing_keys.generate_keypair(pair.private_path, tmp_path / "other.pub")
    with pytest.raises(SigningKeyError, match="already exists"):
        signing_keys.generate_keypair(tmp_path / "other.key", pair.public_path)
    assert pair.private_path.read_bytes() == before
    assert not (tmp_path / "other.key").exists()


def test_keygen_refuses_paths_inside_the_project_or_a_repo(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    with pytest.raises(SigningKeyError, match="inside the project"):
        signing_keys.generate_keypair(
            project / "keys" / "a.key", tmp_path / "a.pub", project_dir=project
        )
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    with pytest.raises(SigningKeyError, match="inside the git work tree"):
        signing_keys.generate_keypair(repo / "secrets" / "a.key", tmp_path / "b.pub")
    assert not (repo / "secrets" / "a.key").exists()


def test_private_key_passphrase_and_permissions(tmp_path: Path) -> None:
    pair = signing_keys.generate_keypair(
        tmp_path / "e.key", tmp_path / "e.pub", passphrase=b"s3cret"
    )
    assert signing_keys.load_private_key(pair.private_path, passphrase=b"s3cret")
    with pytest.raises(SigningKeyError, match="encrypted and no passphrase"):
        signing_keys.load_private_key(pair.private_path)
    with pytest.raises(SigningKeyError, match="passphrase is wrong"):
        signing_keys.load_private_key(pair.private_path, passphrase=b"nope")
    pair.private_path.chmod(0o640)
    with pytest.raises(SigningKeyError, match=r"readable by other users.*chmod 600"):
        signing_keys.load_private_key(pair.private_path, passphrase=b"s3cret")
    with pytest.raises(SigningKeyError, match="cannot read private key"):
        signing_keys.load_private_key(tmp_path / "missing.key")


@pytest.mark.parametrize(
    "value",
    ["", "not base64!", "AAAA", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"],
)
def test_bad_trusted_keys_are_config_errors(value: str) -> None:
    with pytest.raises(SigningKeyError, match="approver key 'dora' is not an Ed25519 public key"):
        signing_keys.trusted_key_index({"dora": value})


def test_payload_is_canonical_and_sorts_destinations() -> None:
    common = {"approver": "alice", "key_id": "k" * 16, "at": "t", "definition_sha256": "d"}
    one = approvals.approval_payload("s", "a" * 64, "b" * 64, ["z", "a", "a"], **common)
    two = approvals.approval_payload("s", "a" * 64, "b" * 64, ("a", "z"), **common)
    assert one == two
    assert b'"destinations":["a","z"]' in one
    assert b" " not in one


# --------------------------------------------------------------------------- approve


def test_approve_then_check(conn: sqlite3.Connection, keys: Keys) -> None:
    made = approve(conn, keys)
    got = check(conn, keys)
    assert got == made
    assert (got.approver, got.destinations, got.note) == (
        "alice",
        ("file_export", "meta_main"),
        "reviewed with legal",
    )
    entry, signed = audit.read_entries(conn)
    assert (entry.kind, entry.subject, entry.actor) == ("approval", "diabetes-outreach", "alice")
    assert entry.details_dict()["approval_id"] == made.id
    assert (signed.kind, signed.details_dict()["hash"]) == ("checkpoint", entry.hash)
    result = audit.verify(conn, public_keys=keys.trusted)
    assert (result.ok, result.checkpoints) == (True, 1)


def test_self_made_key_cannot_approve(conn: sqlite3.Connection, keys: Keys) -> None:
    with pytest.raises(ApprovalError, match="is not a trusted approver key") as info:
        approve(conn, keys, approver="mallory", private_key_path=keys.mallory)
    assert info.value.exit_code == EXIT_BLOCKED
    assert conn.execute("SELECT count(*) FROM approvals").fetchone()[0] == 0
    assert audit.head(conn)[0] == 0


def test_key_must_belong_to_the_named_approver(conn: sqlite3.Connection, keys: Keys) -> None:
    with pytest.raises(ApprovalError, match="belongs to approver 'bob', not 'alice'"):
        approve(conn, keys, private_key_path=keys.bob)


def test_forged_row_signed_by_an_untrusted_key_is_refused(
    conn: sqlite3.Connection, keys: Keys
) -> None:
    # Mallory approves in a project where she is trusted, then copies the row over.
    approve(
        conn,
        keys,
        approver="mallory",
        private_key_path=keys.mallory,
        trusted_keys={**keys.trusted, "mallory": (keys.mallory.with_suffix(".pub")).read_text()},
    )
    with pytest.raises(ApprovalError, match=r"signed by key [0-9a-f]{16}, which is not a trusted"):
        check(conn, keys)


def test_key_removed_from_trusted_list_is_refused(conn: sqlite3.Connection, keys: Keys) -> None:
    approve(conn, keys)
    with pytest.raises(ApprovalError, match=r"not a trusted approver key"):
        check(conn, keys, trusted_keys={"bob": keys.trusted["bob"]})


def test_wrong_key_id_in_row_is_refused(conn: sqlite3.Connection, keys: Keys) -> None:
    approve(conn, keys)
    bob_id = signing_keys.key_id(signing_keys.load_public_key(keys.trusted["bob"]))
    conn.execute("UPDATE approvals SET key_id = ?", (bob_id,))
    with pytest.raises(ApprovalError, match="signature does not match its payload"):
        check(conn, keys)


@pytest.mark.parametrize(
    ("update", "params", "match"),
    [
        ("segment_digest = ?", (digest(EDITED),), "column.s. segment_digest differ"),
        ("policy_digest = ?", ("q" * 64,), "column.s. policy_digest differ"),
        ("destinations = ?", ('["file_export","google_ads","meta_main"]',), "destinations differ"),
        ("approver = ?", ("bob",), "approver differ"),
        ("definition = ?", (EDITED,), "definition_sha256 differ"),
        ("payload = replace(payload, 'meta_main', 'google_ads')", (), "signature does not match"),
        ("signature = 'AAAA'", (), "signature does not match"),
    ],
)
def test_edited_approval_row_is_refused(
    conn: sqlite3.Connection, keys: Keys, update: str, params: tuple, match: str
) -> None:
    approve(conn, keys)
    conn.execute(f"UPDATE approvals SET {update}", params)
    with pytest.raises(ApprovalError, match=match) as info:
        # The caller presents whatever the edited row now claims.
        check(
            conn, keys, segment_digest=digest(EDITED) if "segment" in update else digest(DEFINITION)
        )
    assert "audiences audit verify" in str(info.value)
    assert "audiences approve diabetes-outreach --by NAME --key PATH" in str(info.value)


def test_changed_definition_shows_a_diff(conn: sqlite3.Connection, keys: Keys) -> None:
    approve(conn, keys)
    with pytest.raises(
        ApprovalError, match="segment definition changed since alice approved it"
    ) as info:
        check(conn, keys, segment_digest=digest(EDITED), definition_text=EDITED)
    message = str(info.value)
    assert "-    - age: {between: [40, 75]}" in message
    assert "+    - age: {between: [18, 75]}" in message
    assert f"{digest(DEFINITION)[:12]} → {digest(EDITED)[:12]}" in message
    assert message.rstrip().endswith("--by NAME --key PATH`")


def test_long_diffs_are_truncated(conn: sqlite3.Connection, keys: Keys) -> None:
    long_old = "".join(f"- rule_{i}: {i}\n" for i in range(200))
    long_new = "".join(f"- rule_{i}: {i + 1}\n" for i in range(200))
    approve(conn, keys, definition_text=long_old, segment_digest=digest(long_old))
    with pytest.raises(ApprovalError, match=r"more diff lines") as info:
        check(conn, keys, definition_text=long_new, segment_digest=digest(long_new))
    assert len(str(info.value).splitlines()) < 50


def test_changed_pack_and_destinations_are_refused(conn: sqlite3.Connection, keys: Keys) -> None:
    approve(conn, keys)
    with pytest.raises(
        ApprovalError,
        match=r"effective policy \(policy pack, audiences.toml or trusted approvers\) changed "
        r"since approval \(digest ppppppppppppppppppp → qqqqqqqqqqqqqqqqqqq\)",
    ):
        check(conn, keys, policy_digest="q" * 64)
    with pytest.raises(
        ApprovalError,
        match=r"destinations changed since approval \(added google_ads; removed file_export\)",
    ):
        check(conn, keys, destinations=["meta_main", "google_ads"])


def test_no_approval_is_refused(conn: sqlite3.Connection, keys: Keys) -> None:
    with pytest.raises(
        ApprovalError, match="'diabetes-outreach' is not approved — ask a compliance officer"
    ):
        check(conn, keys)


# --------------------------------------------------------------------------- revoke


def test_revoke_blocks_and_reapproval_restores(conn: sqlite3.Connection, keys: Keys) -> None:
    approve(conn, keys)
    revoked = approvals.revoke(conn, "diabetes-outreach", "bob")
    assert revoked.revoked_by == "bob"
    with pytest.raises(ApprovalError, match="was revoked by bob"):
        check(conn, keys)
    with pytest.raises(ApprovalError, match=r"no approval to revoke .already revoked by bob"):
        approvals.revoke(conn, "diabetes-outreach", "bob")
    approve(conn, keys)
    assert check(conn, keys).revoked_at is None
    kinds = [e.kind for e in audit.read_entries(conn)]
    assert kinds == ["approval", "checkpoint", "revocation", "approval", "checkpoint"]
    assert audit.verify(conn, public_keys=keys.trusted).checkpoints == 2


def test_revoking_an_unapproved_segment_is_an_error(conn: sqlite3.Connection) -> None:
    with pytest.raises(ApprovalError, match="segment 'nope' has no approval to revoke"):
        approvals.revoke(conn, "nope", "bob")
    assert audit.head(conn)[0] == 0


def test_unrevoking_in_the_database_is_refused(conn: sqlite3.Connection, keys: Keys) -> None:
    approve(conn, keys)
    approvals.revoke(conn, "diabetes-outreach", "bob")
    conn.execute("UPDATE approvals SET revoked_at = NULL, revoked_by = NULL")
    with pytest.raises(ApprovalError, match="was revoked by bob"):
        check(conn, keys)


def test_deleting_a_newer_approval_does_not_revive_an_older_one(
    conn: sqlite3.Connection, keys: Keys
) -> None:
    approve(conn, keys)
    approve(conn, keys, segment_digest=digest(EDITED), definition_text=EDITED)
    conn.execute("DELETE FROM approvals WHERE id = 2")
    with pytest.raises(
        ApprovalError, match=r"latest approval in the audit log .entry 3. is not approval 1"
    ):
        check(conn, keys)


def test_row_without_audit_entry_is_refused(conn: sqlite3.Connection, keys: Keys) -> None:
    approve(conn, keys)
    conn.execute("DELETE FROM audit")
    with pytest.raises(ApprovalError, match="approval 1 has no audit entry"):
        check(conn, keys)


def test_works_on_the_real_state_database(tmp_path: Path, keys: Keys) -> None:
    from audiences.core import state

    conn = state.connect(tmp_path / ".audiences" / "state.db")
    try:
        made = approve(conn, keys)
        assert check(conn, keys) == made
        approvals.revoke(conn, "diabetes-outreach", "bob")
        with pytest.raises(ApprovalError, match="was revoked by bob"):
            check(conn, keys)
        assert audit.verify(conn, public_keys=keys.trusted).ok
    finally:
        conn.close()
