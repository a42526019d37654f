"""One example (or a few) per command, shown as the epilog of its ``--help``.

tests/test_docs.py runs every line here, in this order, on a scratch project (the same
way it runs the examples of README.md and docs/): an example that stops working, or names
an option a command lacks, fails the suite. A line whose comment says ``until Ctrl-C``
serves forever and is not run.
"""

from __future__ import annotations

import click

# In the order a new project meets them: each line works after the ones before it.
EXAMPLES: dict[str, tuple[str, ...]] = {
    "init": (
        "audiences init clinic",
        "audiences init clinic-crm --from ~/exports/contacts.csv --events ~/exports/events.csv",
    ),
    "sample-data": ("audiences sample-data --rows 200000 --seed 1",),
    "columns": ("audiences columns contacts",),
    "validate": ("audiences validate --json",),
    "schema": ("audiences schema > segment.schema.json",),
    "preview": ("audiences preview flu-shot-reminder --epsilon 0.5",),
    "overlap": ("audiences overlap flu-shot-reminder newsletter-nyc --epsilon 0.5",),
    "budget": ("audiences budget",),
    "keygen": ("audiences keygen --private ~/.audiences/alice.key",),
    "review": ("audiences review flu-shot-reminder --by alice --key ~/.audiences/alice.key",),
    "approve": (
        'audiences approve flu-shot-reminder --by alice --key ~/.audiences/alice.key --note "COMP-142"',
    ),
    "approvers list": ("audiences approvers list",),
    "approvers add": (
        "audiences approvers add bob --public BASE64 --by alice --key ~/.audiences/alice.key",
        "audiences approvers add cron --checkpoints-only --public BASE64 --by alice "
        "--key ~/.audiences/alice.key",
    ),
    "approvers remove": ("audiences approvers remove bob --by alice --key ~/.audiences/alice.key",),
    "build": ("audiences build flu-shot-reminder --log-json builds.jsonl",),
    "report": ("audiences report flu-shot-reminder --format html --out report.html",),
    "plan": ("audiences plan --all",),
    "sync": ("audiences sync --all --json --log-json sync.jsonl",),
    "status": ("audiences status",),
    "history": ("audiences history flu-shot-reminder --limit 5",),
    "audit verify": ("audiences audit verify --anchor SEQ:HASH",),
    "audit checkpoint": ("audiences audit checkpoint --key ~/.audiences/alice.key",),
    "audit export": ("audiences audit export --out audit.jsonl",),
    "state backup": ("audiences state backup --out ~/backups/state.tar",),
    "state restore": ("audiences state restore ~/backups/state.tar",),
    "state adopt": ("audiences state adopt",),
    "state repair": ("audiences state repair",),
    "takedown": ("audiences takedown flu-shot-reminder --by alice",),
    "revoke": ("audiences revoke flu-shot-reminder --by alice",),
    "sandbox": ("audiences sandbox   # serves the sandboxes until Ctrl-C",),
}

JSON_HELP = "Print one JSON document on stdout (also on failure)."


def attach(group: click.Group) -> None:
    """Set each command's epilog from :data:`EXAMPLES`, and the shared help of ``--json``."""
    for path, lines in EXAMPLES.items():
        command: click.Command | None = group
        for part in path.split():
            assert isinstance(command, click.Group)
            command = command.commands.get(part)
        if command is None:
            raise RuntimeError(f"EXAMPLES names a command the CLI lacks: {path}")
        command.epilog = "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)
        for param in command.params:
            if isinstance(param, click.Option) and param.name == "as_json" and not param.help:
                param.help = JSON_HELP
