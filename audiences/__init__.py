"""audiences: privacy-gated healthcare audiences from first-party CRM data.

The job runs down the packages, each layer importing only the ones below it (an
import-linter contract in ``pyproject.toml`` keeps it so; map in docs/internals.md):

========================  ============================================================
``audiences.cli``         the ``audiences`` command: one module per command family
``audiences.pipeline``    build, sync, insights, history, project scaffolding — the only
                          place that wires sources, the gate and connectors together
``audiences.demo``        the synthetic CRM, ``make demo`` and the sandbox launcher
``audiences.compliance``  approver keys, signed approvals, the hash-chained audit log
``connectors``            one folder per destination (file, meta, google_ads)
``policies``              packs, rules, the gate that alone creates a ``Release``;
                          ``policies.privacy``: DP, the budget ledger, anonymization
``audiences.segments``    the segment language (YAML → lazy polars)
``audiences.crm``         CRM sources, identifier normalization and hashing, consent
                          values, person linkage
``audiences.core``        errors, atomic writes, state store, lock, configuration
========================  ============================================================

The library calls behind the CLI::

    from audiences.core.config import load_config
    from audiences.pipeline.build import build
    from audiences.pipeline.insights import preview
    from audiences.pipeline.sync import plan, sync

Module paths of version 0.1 (``audiences.config``, ``audiences.build``, ``audiences.sync``,
``audiences.insights``, ...) keep working as aliases of their new homes (see
:mod:`audiences.core.moved`); new code should import from the packages above.
"""

from __future__ import annotations

from audiences.core import moved

__version__ = "0.1.0"

moved.install()

__all__ = ["__version__"]
