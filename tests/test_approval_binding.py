"""Issue #15 item 2: the approval binds the effective policy and the approver keys.

docs/policy-rules.md, "What the gate defends against": after `audiences approve`, every
edit of audiences.toml that changes who is released or where blocks the segment (exit 3,
with a readable diff) until re-approved; `require_approval = false` cannot lower the
pack's requirement (exit 1); a key added to audiences.toml is trusted only when an
already trusted approver signs it in (`audiences approvers add`).

Each attack runs against the real CLI (CliRunner) on an approved all-adults → Meta.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import frozen_clock

from audiences.compliance.keys import generate_keypair

SEG = "all-adults"


@pytest.fixture
def project(make_project: Any) -> Any:
    from datetime import UTC, datetime

    with frozen_clock(datetime.now(UTC).date()):
        p = make_project(rows=3000, segments=(SEG,))
        assert p.cli("sync", SEG).exit_code == 0
        yield p


def blocked_with(result: Any, *parts: str) -> None:
    assert result.exit_code == 3, (result.exit_code, result.stderr)
    for part in parts:
        assert part in result.stdout + result.stderr, (result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr


def sub(pattern: str, repl: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        new, n = re.subn(pattern, repl, text, count=1, flags=re.M)
        assert n == 1, pattern
        return new

    return edit


TOML_ATTACKS = {
    "sensitive_columns emptied": (
        r"^sensitive_columns = .*$",
        "sensitive_columns = []",
        "department",
    ),
    "sensitive columns emptied": (r"^sensitive = \[.*$", "sensitive = []", "diagnosis_codes"),
    "do-not-contact unmapped": (r'^do_not_contact = "do_not_contact"$', "", "do_not_contact"),
    "deceased unmapped": (r'^deceased = "deceased"$', "", "deceased"),
    "pack swapped": (r'^pack = "[^"]*"', 'pack = "baseline"', "baseline"),
    "ad account changed": (r'^ad_account_id = ".*"$', 'ad_account_id = "act_999"', "act_999"),
    # how the values are read: a text condition made to match other spellings
    "compared case-insensitively": (
        r"^\[sources\.contacts\]$",
        '[sources.contacts]\ncase_insensitive = ["preferred_language"]',
        "case_insensitive",
    ),
    # exfiltration: the approved upload sent to another server that answers like Meta
    "endpoint redirected": (
        r'^endpoint = "(https?)://127\.0\.0\.1:(\d+)"',
        r'endpoint = "\1://127.0.0.2:\2"',
        "127.0.0.2",
    ),
}


@pytest.mark.parametrize("attack", sorted(TOML_ATTACKS))
def test_attack_audiences_toml_edit_after_approval_blocks(project: Any, attack: str) -> None:
    """Before: released without re-approval (exit 0). After: exit 3 with the diff."""
    pattern, repl, shown = TOML_ATTACKS[attack]
    project.edit_toml(sub(pattern, repl))
    for command in ("build", "sync", "plan"):
        result = project.cli(command, SEG)
        if command == "plan":
            assert result.exit_code in (0, 3)
            assert "effective policy" in result.stdout + result.stderr
            continue
        blocked_with(result, "effective policy", "changed since approval", shown)
    # the officer re-approves the new policy knowingly; then it runs
    project.approve(SEG)
    assert project.cli("build", SEG).exit_code in (0, 3)  # the gate itself may still block


def test_attack_contacts_read_from_a_file_of_ones_own_blocks(project: Any) -> None:
    """A copy of the export where everyone said yes (consent granted, nobody deceased),
    read instead of the CRM's: before, released without re-approval."""
    import polars as pl

    data = project.root / "data"
    mine = data / "everyone-consents.parquet"
    pl.read_parquet(data / "contacts.parquet").with_columns(
        pl.lit(True).alias("marketing_opt_in"),
        pl.lit(False).alias("do_not_contact"),
        pl.lit(False).alias("deceased"),
    ).write_parquet(mine)
    project.edit_toml(
        sub(r'^path = "data/contacts\.parquet"', 'path = "data/everyone-consents.parquet"')
    )
    for command in ("build", "sync"):
        blocked_with(project.cli(command, SEG), "changed since approval", "everyone-consents")


def test_attack_require_approval_false_cannot_lower_the_pack(project: Any) -> None:
    project.edit_toml(sub(r"^\[approvers\]$", "[approvers]\nrequire_approval = false"))
    result = project.cli("sync", SEG)
    assert result.exit_code == 1, result.stderr
    assert "require_approval = false cannot lower" in result.stderr
    assert project.query("SELECT count(*) FROM syncs WHERE status='ok'") == [(1,)]


def test_require_approval_true_raises_it(project: Any) -> None:
    project.edit_toml(sub(r"^\[approvers\]$", "[approvers]\nrequire_approval = true"))
    blocked_with(project.cli("build", SEG), "effective policy")


def test_unchanged_toml_still_releases(project: Any) -> None:
    assert project.cli("build", SEG).exit_code == 0
    project.edit_toml(lambda t: t + "\n# a comment changes nothing\n")
    assert project.cli("build", SEG).exit_code == 0


def _self_made_key(tmp_path: Path, name: str) -> Any:
    return generate_keypair(tmp_path / "keys" / f"{name}.key", tmp_path / "keys" / f"{name}.pub")


def test_attack_self_made_key_in_toml_approves_nothing(project: Any, tmp_path: Path) -> None:
    """Before: a key pasted into [approvers] keys approved its owner's own segment."""
    mallory = _self_made_key(tmp_path, "mallory")
    project.edit_toml(sub(r"^keys = \{ ", f'keys = {{ "mallory" = "{mallory.public_base64}", '))
    result = project.cli("approve", SEG, "--by", "mallory", "--key", str(mallory.private_path))
    blocked_with(result, "'mallory' in audiences.toml is not a trusted approver key",
                 "audiences approvers add mallory")  # fmt: skip
    blocked_with(project.cli("sync", SEG), "audiences approvers add mallory")
    # a self-signed `approvers add` is refused too
    added = project.cli(
        "approvers", "add", "mallory", "--public", mallory.public_base64,
        "--by", "mallory", "--key", str(mallory.private_path),
    )  # fmt: skip
    blocked_with(added, "is not a trusted approver")


def test_signed_addition_and_removal(project: Any, tmp_path: Path) -> None:
    sam = _self_made_key(tmp_path, "sam")
    dana = project.approver
    doc = project.cli_json(
        "approvers", "add", "sam", "--public", sam.public_base64,
        "--by", dana.name, "--key", str(dana.private_key),
    )  # fmt: skip
    assert doc["key_id"] == sam.key_id
    listed = project.cli_json("approvers", "list")["approvers"]
    assert {r["approver"] for r in listed} == {dana.name, "sam"}
    assert all(r["since"] for r in listed)
    # the approver set is part of what was approved: re-approval needed, by sam now
    blocked_with(project.cli("build", SEG), "effective policy")
    ok = project.cli("approve", SEG, "--by", "sam", "--key", str(sam.private_path))
    assert ok.exit_code == 0, ok.stderr
    assert project.cli("build", SEG).exit_code == 0
    removed = project.cli(
        "approvers", "remove", "sam", "--by", dana.name, "--key", str(dana.private_key)
    )
    assert removed.exit_code == 0, removed.stderr
    blocked_with(project.cli("build", SEG), "not a trusted approver key")


def test_edited_trust_entry_is_refused(project: Any, tmp_path: Path) -> None:
    """Forging an `approver_add` row without a trusted signature verifies nothing."""
    import sqlite3

    sam = _self_made_key(tmp_path, "sam")
    dana = project.approver
    assert project.cli(
        "approvers", "add", "sam", "--public", sam.public_base64,
        "--by", dana.name, "--key", str(dana.private_key),
    ).exit_code == 0  # fmt: skip
    conn = sqlite3.connect(project.state_db)
    conn.execute("DROP TRIGGER IF EXISTS audit_no_update")
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall()
    for (name,) in rows:
        conn.execute(f'DROP TRIGGER "{name}"')
    conn.execute("UPDATE audit SET subject='mallory' WHERE kind='approver_add' AND subject='sam'")
    conn.commit()
    conn.close()
    result = project.cli("build", SEG)
    blocked_with(result, "signature does not verify")
