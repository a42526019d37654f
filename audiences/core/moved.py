"""Module paths of version 0.1, kept importable as aliases of their new homes.

``from audiences.config import load_config`` still works: the old name resolves to the
same module object as ``audiences.core.config`` (one module, not a copy, so state and
monkeypatches are shared). Only imports of these exact names are redirected.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

MOVED = {
    "audiences.errors": "audiences.core.errors",
    "audiences.atomic": "audiences.core.atomic",
    "audiences.state": "audiences.core.state",
    "audiences.lock": "audiences.core.lock",
    "audiences.config": "audiences.core.config",
    "audiences.sources": "audiences.crm.sources",
    "audiences.identifiers": "audiences.crm.identifiers",
    "audiences.linkage": "audiences.crm.linkage",
    "audiences.approvals": "audiences.compliance.approvals",
    "audiences.audit": "audiences.compliance.audit",
    "audiences.build": "audiences.pipeline.build",
    "audiences.sync": "audiences.pipeline.sync",
    "audiences.insights": "audiences.pipeline.insights",
    "audiences.membership": "audiences.pipeline.membership",
    "audiences.history": "audiences.pipeline.history",
    "audiences.project": "audiences.pipeline.project",
    "audiences.display": "audiences.cli.display",
    "audiences.sample": "audiences.demo.sample",
    "audiences.sandboxes": "audiences.demo.sandboxes",
    "policies.dp": "policies.privacy.dp",
    "policies.ledger": "policies.privacy.ledger",
    "policies.anonymize": "policies.privacy.anonymize",
}


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(self.target)
        self.spec = module.__spec__  # the import system overwrites it with the alias's
        return module

    def exec_module(self, module: ModuleType) -> None:
        """The target module ran when it was imported: give it back its own spec."""
        module.__spec__ = self.spec


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        new = MOVED.get(fullname)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Alias(new))


def install() -> None:
    """Put the alias finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.append(_Finder())
