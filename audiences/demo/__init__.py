"""Demo material, imported by the CLI only: sample data, sandboxes and ``make demo``.

``sample`` (the synthetic CRM: ``generate``, ``write``), ``sandboxes`` (``running``:
the Meta and Google Ads sandboxes on 127.0.0.1), ``run`` (``main``: the whole job on
sample data, ``python -m audiences.demo``).
"""

__all__ = ["run", "sample", "sandboxes"]
