"""Destinations: one folder each, all behind :class:`connectors.base.Connector`.

- :mod:`connectors.file` — release files (hashed identifiers, or k-anonymous records);
- :mod:`connectors.meta` — Meta Custom Audiences (facebook-business SDK);
- :mod:`connectors.google_ads` — Google Ads Customer Match (google-ads SDK);
- :mod:`connectors.base` — the connector interface and the shared ``open()``;
- :mod:`connectors.retry` — the one retry policy every connector uses;
- :mod:`connectors.registry` — the connector of each destination kind (plugins);
- :mod:`connectors.sandbox` — local stand-ins of the platforms on 127.0.0.1, for tests
  and the demo.

Connectors accept nothing but a gate-made :class:`policies.release.Release`; they import
``audiences.core``, ``audiences.crm`` and ``policies`` — never the pipeline.
"""

__all__ = ["base", "file", "google_ads", "meta", "registry", "retry", "sandbox"]
