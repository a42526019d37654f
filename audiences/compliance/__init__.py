"""Who may release what, and the record of it (docs/compliance-workflow.md).

``keys`` (approver Ed25519 key pairs: ``generate_keypair``, ``trusted_key_index``),
``approvals`` (``approve``, ``revoke``, ``check_approval``: signatures bound to segment
and policy digests), ``audit`` (the hash-chained log: ``append``, ``checkpoint``,
``verify``, ``export``), ``workflow`` (the approvals bound to a project's config,
segments and pack: ``approve``, ``check``).
"""

__all__ = ["approvals", "audit", "keys", "workflow"]
