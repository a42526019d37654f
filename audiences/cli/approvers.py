"""Approver commands: ``approvers list``, ``approvers add``, ``approvers remove``.

The trusted approver keys live in the audit chain, not in ``audiences.toml``: the keys
listed there at the first approval are trusted on first use, and a key is added or
removed only by an entry signed with an already trusted key (docs/compliance-workflow.md).
"""

from __future__ import annotations

from pathlib import Path

import click

from audiences.cli.group import Context, cli, emit_json, file_option, pass_ctx


@cli.group()
def approvers() -> None:
    """List, add or remove the trusted approver keys (signed audit entries)."""


@approvers.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def list_(obj: Context, as_json: bool) -> None:
    """Which approver keys are trusted, since when, and for which accounts (custody)."""
    from audiences.compliance.workflow import (
        account_approvers,
        checkpoint_keys,
        trusted_approvers,
    )
    from audiences.core.state import connect

    config = obj.config()
    conn = connect(config.state_db)
    try:
        trusted = trusted_approvers(conn)
        checkpointers = checkpoint_keys(conn)
    finally:
        conn.close()
    rows = [
        {"approver": name, "key_id": t["key_id"], "since": t["since"]}
        for name, t in sorted(trusted.items())
    ]
    signers = [
        {"name": name, "key_id": t["key_id"], "since": t["since"]}
        for name, t in sorted(checkpointers.items())
    ]
    accounts = account_approvers(config)
    if as_json:
        emit_json({"approvers": rows, "checkpoint_keys": signers, "accounts": accounts})
        return
    if not rows:
        click.echo("No trusted approver keys yet: the first `audiences approve` trusts the keys "
                   "under [approvers] keys in audiences.toml.")  # fmt: skip
    for row in rows:
        click.echo(f"{row['approver']}  {row['key_id']}  trusted since {row['since']}")
    for row in signers:
        click.echo(
            f"{row['name']}  {row['key_id']}  signs audit checkpoints only, since {row['since']}"
        )
    for account in accounts:
        names = ", ".join(account["destinations"])
        if account["approvers"] is None:
            click.echo(f"{account['account']} ({names}): no approvers on this OS account yet")
            continue
        who = ", ".join(f"{a['approver']} {a['key_id']}" for a in account["approvers"])
        click.echo(f"{account['account']} ({names}): {who}")


def _change(obj: Context, kind: str, name: str, public: str | None, by: str, key: Path) -> dict:  # type: ignore[type-arg]
    from audiences.compliance import workflow
    from audiences.core.state import connect

    config = obj.config()
    conn = connect(config.state_db)
    try:
        return workflow.change_approver(
            conn, config, kind, name, public=public, by=by, key_path=key
        )
    finally:
        conn.close()


@approvers.command("add")
@click.argument("name")
@click.option("--public", "public", required=True, help="The new key: base64 or PEM text.")
@click.option("--by", required=True, help="A trusted approver who signs the addition.")
@file_option("--key", "key_path", exists=True, required=True, help="--by's private key.")
@click.option(
    "--checkpoints-only",
    is_flag=True,
    help="Trust the key to sign audit checkpoints only (the scheduled job's "
    "`sync --checkpoint-key`): it never approves, reviews or changes approvers.",
)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def add(
    obj: Context,
    name: str,
    public: str,
    by: str,
    key_path: Path,
    checkpoints_only: bool,
    as_json: bool,
) -> None:
    """Trust NAME's public key, signed by an already trusted approver."""
    from audiences.compliance.workflow import ADD_KIND, CHECKPOINT_ADD_KIND

    kind = CHECKPOINT_ADD_KIND if checkpoints_only else ADD_KIND
    doc = _change(obj, kind, name, public, by, key_path)
    if as_json:
        emit_json(doc)
    else:
        role = " to sign audit checkpoints only" if checkpoints_only else ""
        click.echo(f"Trusted {name} (key {doc['key_id']}){role}, signed by {by}.", err=True)


@approvers.command("remove")
@click.argument("name")
@click.option("--by", required=True, help="A trusted approver who signs the removal.")
@file_option("--key", "key_path", exists=True, required=True, help="--by's private key.")
@pass_ctx
def remove(obj: Context, name: str, by: str, key_path: Path) -> None:
    """Stop trusting NAME's key (an approver or a checkpoint-only key), signed by a trusted
    approver."""
    from audiences.compliance.workflow import REMOVE_KIND

    doc = _change(obj, REMOVE_KIND, name, None, by, key_path)
    click.echo(f"Removed {name} (key {doc['key_id']}), signed by {by}.", err=True)
