"""The opt-out index, computed once per export and kept in the state folder.

The duplicate-of-opt-out linkage (:mod:`audiences.crm.linkage`) needs, for every CRM
record that opted out, its coarse link keys. They depend on the data and on the identity
and consent mapping, not on the segment, so a night of builds over one export computes
them once: ``.audiences/optout-index.bin`` holds the index of the last export seen, keyed
by the source digest, the contacts file's size, modification and change times and inode
(the digest is cached by size and modification time alone: a rewrite that keeps both
still changes the change time), and the mapping's identity (``linkage.index_identity``).

What the file holds, and what it does not: per opted-out record that could match anyone,
its row position in the contacts source and, per link (email, phone, name + postal code),
a 32-bit *keyed* hash of its coarse key plus one reliability bit. No email, phone, name or
postal code, nor an unkeyed hash of one. The coarse keys are polars' seeded hash of the
linkage's coarse key, with seeds derived (HMAC-SHA256) from the project secret
``.audiences/record.key``. The file alone tells how many records opted out and where they
sit in the export; whoever also holds ``record.key`` (the whole state folder) can test a
guessed mailbox, phone tail or name + ZIP for "some record with this coarse key opted out"
— the export itself tells them more. The seeded hash is not a cryptographic MAC; the
file's integrity is: the whole file is authenticated with a keyed BLAKE3 under another key
derived from ``record.key``.

Never trusted when in doubt: a file that is missing, truncated, fails its MAC, or was made
for other data or another mapping is recomputed (and rewritten); a damaged or forged one
is reported with a warning. An edit that drops opt-outs from the file therefore cannot
drop them from a build without ``record.key``. The file is written atomically (0600),
without an fsync: it is re-creatable, and a crash leaves it whole or absent.
"""

from __future__ import annotations

import hmac
import io
import json
import logging
import struct
from collections.abc import Callable
from pathlib import Path

import blake3
import polars as pl

from audiences.core.atomic import write_with
from audiences.core.config import ProjectConfig
from audiences.crm.linkage import IndexStore, Seeds
from audiences.crm.sources import Sources, file_stamp
from audiences.pipeline import state_record

__all__ = ["INDEX_NAME", "REQUESTS_INDEX_NAME", "StateIndexStore", "store_for"]

INDEX_NAME = "optout-index.bin"
# The index of the records carrying a request a jurisdiction pack honours (GPC, "limit
# use", withdrawn consent to share): the same format, keyed on the packs' flags.
REQUESTS_INDEX_NAME = "requests-index.bin"
_MAGIC = b"audiences opt-out index v1\n"
_MAC_SIZE = 32
_log = logging.getLogger(__name__)


def _derived(secret: bytes, purpose: bytes) -> bytes:
    return state_record.derived_key(secret, b"audiences opt-out index", purpose)


class StateIndexStore(IndexStore):
    """The opt-out index of one export in ``state_dir``, authenticated with keys derived
    from the project secret (created on first use, as the audience record does)."""

    def __init__(
        self,
        state_dir: Path,
        digest: Callable[[], str],
        contacts: Path | None,
        name: str = INDEX_NAME,
    ) -> None:
        self.path = state_dir / name
        self._state_dir = state_dir
        self._digest = digest
        self._contacts = contacts
        self._seen: list[int] | None = None  # the file as it was before the index was read
        self._secret: bytes | None = None
        self.computed = 0  # indexes computed and saved by this store (tests, benchmarks)

    def _key(self) -> bytes:
        if self._secret is None:
            self._secret = state_record.project_secret(self._state_dir)
        return self._secret

    def seeds(self) -> Seeds:
        raw = _derived(self._key(), b"coarse key seeds")
        a, b, c, d = struct.unpack("<4Q", raw)
        return (a, b, c, d)

    def _file(self) -> list[int]:
        return file_stamp(self._contacts)

    def _mac(self, *parts: bytes | memoryview) -> bytes:
        """The MAC of the concatenation of ``parts`` (fed in turn: no joined copy)."""
        hasher = blake3.blake3(
            key=_derived(self._key(), b"file mac"), max_threads=blake3.blake3.AUTO
        )
        for part in parts:
            hasher.update(part)
        return hasher.digest()

    def load(self, identity: str) -> pl.DataFrame | None:
        self._seen = self._file()  # before the contacts are read for a new index
        # read in its parts, each once: slicing one ``bytes`` of the whole file copied the
        # index twice (145 MB at 10M contacts, with 64-bit keys: 0.2 s of a 0.5 s load)
        head = len(_MAGIC) + _MAC_SIZE + 4
        try:
            with self.path.open("rb") as file:
                start = file.read(head)
                if len(start) < head or not start.startswith(_MAGIC):
                    return self._distrust("is not an opt-out index (damaged or replaced)")
                (size,) = struct.unpack(">I", start[-4:])
                header_text = file.read(size)
                table = file.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            return self._distrust(f"cannot be read ({exc.strerror})")
        mac = start[len(_MAGIC) : len(_MAGIC) + _MAC_SIZE]
        if not hmac.compare_digest(mac, self._mac(start[-4:], header_text, table)):
            return self._distrust(
                "fails its authentication (edited, replaced or damaged, or record.key changed)"
            )
        try:
            header = json.loads(header_text)
            same = (header.get("digest"), header.get("file"), header.get("identity"))
            if same != (self._digest(), self._seen, identity):
                return None  # another export or mapping: recomputed, silently (expected)
            index = pl.read_parquet(io.BytesIO(table))  # (BytesIO shares the bytes)
        except (ValueError, pl.exceptions.PolarsError, OSError):
            return self._distrust("cannot be parsed")
        if index.height != header.get("rows"):
            return self._distrust("does not hold the rows it declares")
        return index

    def _distrust(self, why: str) -> pl.DataFrame | None:
        _log.warning(
            "the opt-out index %s %s; it is not used, the index is recomputed", self.path, why
        )
        return None

    def save(self, identity: str, index: pl.DataFrame) -> None:
        self.computed += 1
        header = json.dumps(
            {
                "v": 1,
                "digest": self._digest(),
                "file": self._seen if self._seen is not None else self._file(),
                "identity": identity,
                "rows": index.height,
            },
            sort_keys=True,
        ).encode()
        buffer = io.BytesIO()
        # uncompressed: keyed hashes do not compress (lz4 saved 1%, at 10M contacts)
        index.write_parquet(buffer, compression="uncompressed", statistics=False)
        table = buffer.getbuffer()
        parts = (struct.pack(">I", len(header)), header, table)
        mac = self._mac(*parts)

        def write(tmp: Path) -> None:
            # in its parts: joining them copied the index twice (0.1 s at 10M contacts)
            with tmp.open("wb") as file:
                for part in (_MAGIC, mac, *parts):
                    file.write(part)

        try:
            write_with(self.path, write, durable=False)
        finally:
            table.release()


def store_for(config: ProjectConfig, sources: Sources, name: str = INDEX_NAME) -> StateIndexStore:
    """The project's store (of the index file ``name``) for the export ``sources`` loaded
    (one per loaded export, so the segments of one run share its counters)."""
    key = "opt-out-index-store" if name == INDEX_NAME else f"index-store:{name}"
    store = sources.cache.get(key)
    if not isinstance(store, StateIndexStore):
        source = config.sources.contacts
        # a PostgreSQL table has no file: its digest is computed by the database each run
        contacts = config.path(source.path) if source.path is not None else None
        store = StateIndexStore(config.state_dir, lambda: sources.digest, contacts, name)
        sources.cache[key] = store
    return store
