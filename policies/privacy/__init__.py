"""Privacy models behind the policies.

Modules: ``dp`` (differentially private figures), ``ledger`` (the privacy budget they
spend), ``anonymize`` (k-anonymous, l-diverse, t-close record-level exports) and
``record_level`` (the settings a record-level export is judged by).
"""

__all__ = ["anonymize", "dp", "ledger", "record_level"]
