"""Approver keys: Ed25519 key pairs, their fingerprints and the trusted-key index.

A compliance officer's key pair signs approvals (:mod:`audiences.compliance.approvals`)
and audit checkpoints (:mod:`audiences.compliance.audit`); both verify against the public
keys trusted by the project. Private keys are written 0600 outside any git work tree.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from audiences.core.errors import ConfigError


class SigningKeyError(ConfigError):
    """A key file is missing, unreadable, not Ed25519, too open, or in the wrong place."""


@dataclasses.dataclass(frozen=True, slots=True)
class KeyPair:
    key_id: str
    private_path: Path
    public_path: Path
    public_base64: str  # raw 32-byte public key, base64: paste into [approvers] keys


def key_id(public_key: Ed25519PublicKey) -> str:
    """Fingerprint: first 16 hex digits of sha256 over the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_public_key(
    value: str | bytes | Ed25519PublicKey, *, name: str = "key"
) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM text or base64 (raw 32 bytes or DER)."""
    if isinstance(value, Ed25519PublicKey):
        return value
    data = value.encode() if isinstance(value, str) else bytes(value)
    data = data.strip()
    try:
        if data.startswith(b"-----BEGIN"):
            key: Any = serialization.load_pem_public_key(data)
        else:
            raw = base64.b64decode(data, validate=True)
            key = (
                Ed25519PublicKey.from_public_bytes(raw)
                if len(raw) == 32
                else serialization.load_der_public_key(raw)
            )
    except (ValueError, TypeError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(
            f"approver key {name!r} is not an Ed25519 public key (PEM or base64)",
            "paste the .pub file written by `audiences keygen`, or its base64 line",
        )
    return key


def trusted_key_index(
    trusted_keys: Mapping[str, str | bytes | Ed25519PublicKey],
) -> dict[str, tuple[str, Ed25519PublicKey]]:
    """``{approver name: public key}`` (as in ``[approvers] keys``) → ``{key_id: (name, key)}``."""
    index: dict[str, tuple[str, Ed25519PublicKey]] = {}
    for name, value in trusted_keys.items():
        public = load_public_key(value, name=name)
        index[key_id(public)] = (name, public)
    return index


def load_private_key(path: Path | str, *, passphrase: bytes | None = None) -> Ed25519PrivateKey:
    """Read a private key written by :func:`generate_keypair`; refuse a group/world-readable one."""
    path = Path(path).expanduser()
    try:
        st = path.stat()
        data = path.read_bytes()
    except OSError as exc:
        raise SigningKeyError(
            f"cannot read private key {path} ({exc.strerror})",
            "pass the path written by `audiences keygen` with --key",
        ) from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SigningKeyError(
            f"private key {path} is readable by other users (mode {stat.S_IMODE(st.st_mode):o})",
            f"run `chmod 600 {path}`",
        )
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError:
        raise SigningKeyError(
            f"private key {path} is encrypted and no passphrase was given"
            if passphrase is None
            else f"private key {path} is not encrypted but a passphrase was given",
            "set the passphrase environment variable, or unset it for an unencrypted key",
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise SigningKeyError(
            f"{path} is not a PEM private key, or the passphrase is wrong",
            "pass the private key written by `audiences keygen`",
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(
            f"private key {path} is not an Ed25519 key",
            "create one with `audiences keygen`",
        )
    return key


def _enclosing_work_tree(path: Path) -> Path | None:
    for parent in path.parents:
        if (parent / ".git").exists():
            return parent
    return None


def generate_keypair(
    private_path: Path | str,
    public_path: Path | str,
    *,
    project_dir: Path | str | None = None,
    passphrase: bytes | None = None,
) -> KeyPair:
    """``audiences keygen``: a new Ed25519 key pair. The private key (PEM, mode 0600) must
    live outside the project and any git work tree; nothing is ever overwritten."""
    private_path = Path(private_path).expanduser().absolute()
    public_path = Path(public_path).expanduser().absolute()
    if project_dir is not None:
        root = Path(project_dir).expanduser().resolve()
        if private_path.resolve().is_relative_to(root):
            raise SigningKeyError(
                f"private key path {private_path} is inside the project {root}",
                "keep private keys outside the project, e.g. --private ~/.audiences/NAME.key",
            )
    tree = _enclosing_work_tree(private_path.resolve())
    if tree is not None:
        raise SigningKeyError(
            f"private key path {private_path} is inside the git work tree {tree}",
            "keep private keys outside any repository, e.g. ~/.audiences/NAME.key",
        )
    for path in (private_path, public_path):
        if path.exists():
            raise SigningKeyError(
                f"{path} already exists; keygen never overwrites a key",
                "choose another path, or move the old key away deliberately",
            )
    private = Ed25519PrivateKey.generate()
    public = private.public_key()
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    public_pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    private_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write_new(private_path, private_pem, 0o600)
    try:
        public_path.parent.mkdir(parents=True, exist_ok=True)
        _write_new(public_path, public_pem, 0o644)
    except BaseException:
        private_path.unlink()
        raise
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return KeyPair(key_id(public), private_path, public_path, base64.b64encode(raw).decode())


def _write_new(path: Path, data: bytes, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise SigningKeyError(
            f"{path} already exists; keygen never overwrites a key",
            "choose another path, or move the old key away deliberately",
        ) from None
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
