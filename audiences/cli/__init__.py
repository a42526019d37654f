"""The ``audiences`` command line. Thin: parse options, call one library function, format.

Exit codes: 0 ok · 1 error · 2 usage · 3 blocked by policy · 75 another run holds the lock.
Every command that reports figures takes ``--json`` (one JSON document on stdout).
Errors are one line on stderr; ``--debug`` shows the traceback.

Modules:

- ``group``: the click group ``cli`` (``--project``, ``--debug``, ``--version``), the
  shared ``Context``/``pass_ctx``, errors → one line and an exit code, and the helpers
  the commands share (``emit_json``, ``parse_as_of``, ``progress_bar``).
- ``project``: ``init``, ``sample-data``, ``validate``, ``schema``, ``sandbox``.
- ``insights``: ``preview``, ``overlap``, ``budget``.
- ``release``: ``build``, ``report``, ``plan``, ``sync``, ``status``, ``history``.
- ``compliance``: ``keygen``, ``approve``, ``revoke``, ``audit verify|export|checkpoint``.
- ``lifecycle``: ``review``, ``takedown``.
- ``approvers``: ``approvers list|add|remove`` (signed changes of the trusted keys).
- ``state``: ``state backup|restore|adopt|repair``.
- ``display``: rich tables for the terminal.
- ``examples``: the examples each command's ``--help`` shows (run by tests/test_docs.py).
- this module: sets polars' allocator to give freed memory back
  (:mod:`audiences.core.memory`, before polars is imported), registers the command
  modules on ``cli`` and holds ``main`` (the ``audiences`` entry point), ``_exit_now``
  and ``_debug_first``.

Command modules import only ``click`` and ``group`` at the top; polars, the SDKs and the
pipeline are imported inside each command, so ``audiences --help`` stays fast.
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import NoReturn

from audiences.core.memory import configure_allocator

configure_allocator()  # before anything imports polars (see audiences.core.memory)

# Importing a command module registers its commands on ``cli``.
from audiences.cli import approvers, compliance, insights, lifecycle, project, release, state  # noqa: E402, F401
from audiences.cli.examples import attach  # noqa: E402
from audiences.cli.group import cli  # noqa: E402

attach(cli)  # each command's --help shows its examples (tests/test_docs.py runs them)

__all__ = ["cli", "main"]


def main() -> None:
    try:
        cli(args=_debug_first(sys.argv[1:]), prog_name="audiences")
    except SystemExit as exc:
        _exit_now(exc.code)
    _exit_now(0)


def _exit_now(code: int | str | None) -> NoReturn:
    """Leave the process the way ``sys.exit`` would, minus tearing the heap down.

    The exit handlers run and the output streams are flushed, but the interpreter does
    not free object by object what a 10M-row build leaves in memory (half a second of
    ``madvise`` calls, for nothing: the process ends). Everything a command writes is
    closed or committed by the command itself before it returns.
    """
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`audiences history | head`)
            code = code or 1
    os._exit(code or 0)


def _debug_first(args: list[str]) -> list[str]:
    """Accept ``--debug`` anywhere (``audiences build x --debug`` as well as
    ``audiences --debug build x``): it is a group option, so move it to the front."""
    end = args.index("--") if "--" in args else len(args)
    if "--debug" not in args[:end]:
        return args
    rest = [a for a in args[:end] if a != "--debug"]
    return ["--debug", *rest, *args[end:]]


if __name__ == "__main__":
    main()
