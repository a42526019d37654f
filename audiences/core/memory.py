"""The memory the ``audiences`` command keeps: hand freed pages back to the system.

polars allocates with its own jemalloc, which polars configures to hand freed pages back
lazily (``muzzy_decay_ms:-1``: ``MADV_FREE``, which the kernel takes back only under
memory pressure, and which count as the process's resident memory until then). A build
is a sequence of short, large phases (the segment's scan, the opt-out index, the re-read
of a few records, the gate, the files), each freeing what it held before the next one
starts, so its resident memory grew to about the *sum* of the phases' peaks — what a
cgroup limit, a container's OOM killer and an operator's monitoring see. Purging freed
pages for good after three seconds, from jemalloc's background thread, took a 10M-contact
first build from 3.8 to 3.0 GB and a second segment from 3.1 to 2.7 GB, for 3–7 % more
wall time (``benchmarks/README.md``, "Memory, then the gate").

jemalloc reads its configuration once, from ``_RJEM_MALLOC_CONF``, when polars is first
imported (polars puts its own defaults in front of what the variable holds; the last
setting of an option wins); :func:`configure_allocator` therefore runs before anything
imports polars (the command line calls it first thing). A value already in the
environment is kept: an operator who sets ``_RJEM_MALLOC_CONF`` chooses for themselves —
unless it holds nothing but polars' own defaults. polars writes those into the
environment of the process that imports it, so every child of a Python program that
imported polars (a scheduler, a notebook, the benchmarks) inherits them without anyone
having chosen them; the command then appends its own setting after them. A program that
imports polars before ``audiences`` in the same process keeps polars' default.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import polars as pl

__all__ = [
    "ALLOCATOR_CONF",
    "ALLOCATOR_VARIABLE",
    "POLARS_DEFAULTS",
    "configure_allocator",
    "own_strings",
]

ALLOCATOR_VARIABLE = "_RJEM_MALLOC_CONF"  # polars' jemalloc is built with the _rjem_ prefix
ALLOCATOR_CONF = "background_thread:true,dirty_decay_ms:3000,muzzy_decay_ms:0"
# what polars' __init__ writes into the environment when nobody set the variable
# (the two ``thp`` options are added under POLARS_THP=1)
POLARS_DEFAULTS = frozenset(
    {"dirty_decay_ms:500", "muzzy_decay_ms:-1", "thp:always", "metadata_thp:always"}
)


def configure_allocator() -> bool:
    """Set polars' allocator configuration unless the caller chose one or polars is
    already loaded (too late: jemalloc has read its configuration). True if it was set."""
    if "polars" in sys.modules:
        return False
    inherited = os.environ.get(ALLOCATOR_VARIABLE)
    if inherited is None:
        os.environ[ALLOCATOR_VARIABLE] = ALLOCATOR_CONF
        return True
    if {option.strip() for option in inherited.split(",") if option.strip()} <= POLARS_DEFAULTS:
        # only polars' defaults, inherited from a parent that imported polars
        os.environ[ALLOCATOR_VARIABLE] = f"{inherited},{ALLOCATOR_CONF}"
        return True
    return False


def own_strings(schema: Mapping[str, Any]) -> list[pl.Expr]:
    """Expressions copying each String column of ``schema`` into buffers of its own.

    polars keeps a string longer than 12 bytes as a view into a shared buffer, and a row
    that survives a filter keeps its whole buffer alive. The segment's candidates (a tenth
    of the contacts) held the e-mail and phone bytes of every contact the scan read: at
    10M contacts 0.47 of the candidates' 0.78 GB; at 100M a build's peak fell from
    14.2 to 10.2 GB once they were copied. Inside the streaming plan, after the segment's
    filters, the copy is made morsel by morsel, within the scan's noise (2.5-2.8 s at
    10M) (``benchmarks/README.md``, "Files, one machine, bigger data")."""
    import polars as pl

    return [
        pl.concat_str([pl.col(name), pl.lit("")]).alias(name)
        for name, dtype in schema.items()
        if dtype == pl.String
    ]
