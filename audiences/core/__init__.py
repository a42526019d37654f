"""The bottom layer: what every other package may use, importing none of them.

``errors`` (:class:`~audiences.core.errors.AudiencesError`, exit codes), ``atomic``
(crash-safe writes: ``write_text``, ``atomic_path``), ``state`` (the SQLite state store:
``connect``, ``transaction``), ``lock`` (one run at a time per project), ``config``
(``load_config`` reads ``audiences.toml``), ``plugins`` (destination kinds from the
``audiences.connectors`` entry points), ``actor`` (who is acting), ``clock`` (the
wall clock protective rules read), ``countries`` (ISO codes), ``moved`` (the module paths of version 0.1).
"""

__all__ = [
    "actor",
    "atomic",
    "clock",
    "config",
    "countries",
    "errors",
    "lock",
    "moved",
    "plugins",
    "state",
]
