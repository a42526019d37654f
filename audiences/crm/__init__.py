"""The CRM as the platforms will see it: sources, identifiers, consent, linkage.

``sources`` (``load_sources``: the lazy ``contacts`` and ``events`` frames, and
``source_digest``), ``identifiers`` (normalization and SHA-256 per platform layout:
``hashed_layout``, ``identifier_quality``, ``member_key``), ``consent`` (consent
columns read as granted / denied / unknown), ``linkage`` (``flag_duplicates_of_opt_outs``:
records sharing an identifier with an opted-out record).
"""

__all__ = ["consent", "identifiers", "linkage", "sources"]
