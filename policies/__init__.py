"""Policy: what may leave the system, judged before anything does.

- :mod:`policies.pack` — policy packs (YAML in ``policies/packs/``), resolved for a project;
- :mod:`policies.rules` — rule kinds: their parameters, filters and verdicts;
- :mod:`policies.suppression` — suppression lists;
- :mod:`policies.gate` — :func:`~policies.gate.evaluate`, the only way to a
  :class:`~policies.release.Release`, and :func:`~policies.gate.record`;
- :mod:`policies.release` — the sealed release connectors accept;
- :mod:`policies.difference` — difference protection between releases to one account;
- :mod:`policies.privacy` — differential privacy (:mod:`~policies.privacy.dp`), the
  budget ledger (:mod:`~policies.privacy.ledger`), k-anonymity for record-level exports
  (:mod:`~policies.privacy.anonymize`, :mod:`~policies.privacy.record_level`);
- :mod:`policies.report` — the compliance report (JSON, Markdown, HTML).

This package imports from ``audiences.core``, ``audiences.crm`` and
``audiences.segments`` only — never connectors or the pipeline.
"""

from audiences.core import moved

moved.install()  # policies.dp, policies.ledger, policies.anonymize of version 0.1

__all__ = [
    "difference",
    "gate",
    "pack",
    "privacy",
    "release",
    "report",
    "rules",
    "suppression",
]
