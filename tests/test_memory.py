"""polars' allocator gives freed memory back in the ``audiences`` command
(audiences.core.memory): a build's resident memory is then its largest phase, not the sum
of its phases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from audiences.core.memory import ALLOCATOR_CONF, ALLOCATOR_VARIABLE

# A child that allocates ~960 MB in polars, frees it, then waits (up to 4 s) for its
# resident memory to fall back; it prints what it saw.
_CHILD = textwrap.dedent(
    """
    import json, os, sys, time
    if sys.argv[1] == "command-first":
        import audiences.cli  # what the `audiences` command imports first
    import polars as pl

    def rss_mb():
        with open("/proc/self/status") as status:
            line = next(l for l in status if l.startswith("VmRSS"))
        return int(line.split()[1]) // 1024

    base = rss_mb()
    frame = pl.select(pl.int_range(0, 60_000_000, dtype=pl.Int64).alias("x"))
    frame = frame.with_columns(y=pl.col("x") * 2)
    peak = rss_mb()
    del frame
    started = time.monotonic()
    while time.monotonic() - started < 4 and rss_mb() > base + (peak - base) // 4:
        time.sleep(0.1)
    print(json.dumps({"base": base, "peak": peak, "after": rss_mb(),
                      "conf": os.environ.get(sys.argv[2])}))
    """
)


def _run(order: str, **env: str) -> dict[str, object]:
    environment = {k: v for k, v in os.environ.items() if k != ALLOCATOR_VARIABLE} | env
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, order, ALLOCATOR_VARIABLE],
        capture_output=True,
        text=True,
        env=environment,
        check=True,
        timeout=120,
    )
    return json.loads(done.stdout)


def test_the_command_gives_freed_memory_back_and_polars_alone_does_not() -> None:
    ours = _run("command-first")
    assert str(ours["conf"]).endswith("," + ALLOCATOR_CONF)  # after polars' defaults
    assert ours["peak"] - ours["base"] > 500  # the allocation happened
    assert ours["after"] < ours["base"] + (ours["peak"] - ours["base"]) // 4
    # the control: polars loaded before the command's setting keeps every freed page
    theirs = _run("polars-first")
    assert ALLOCATOR_CONF not in str(theirs["conf"])
    assert theirs["after"] > theirs["base"] + (theirs["peak"] - theirs["base"]) // 2


def test_an_operators_own_allocator_setting_is_kept() -> None:
    mine = "dirty_decay_ms:10000"
    conf = str(_run("command-first", **{ALLOCATOR_VARIABLE: mine})["conf"])
    assert conf.endswith("," + mine) and ALLOCATOR_CONF not in conf


def test_polars_defaults_inherited_from_a_parent_are_not_an_operators_choice() -> None:
    # a Python parent that imported polars passes polars' own defaults to its children
    # (the benchmarks, a scheduler written in Python): the command still purges
    inherited = subprocess.run(
        [sys.executable, "-c", f"import os, polars; print(os.environ[{ALLOCATOR_VARIABLE!r}])"],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != ALLOCATOR_VARIABLE},
        check=True,
    ).stdout.strip()
    assert inherited and ALLOCATOR_CONF not in inherited
    child = _run("command-first", **{ALLOCATOR_VARIABLE: inherited})
    assert str(child["conf"]).endswith("," + ALLOCATOR_CONF)
    assert child["after"] < child["base"] + (child["peak"] - child["base"]) // 4
