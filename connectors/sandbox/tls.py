"""Self-signed TLS material for sandboxes that must speak TLS on 127.0.0.1.

The Google Ads SDK only opens secure gRPC channels, so its sandbox serves TLS with a
certificate made here: one self-signed certificate (it is its own CA) whose subject
alternative names are ``127.0.0.1`` and ``localhost``. The files go to a fresh
temporary directory (0700) and are written 0600; nothing is ever read from or
written to the working tree.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

LOOPBACK_HOSTS = ("localhost",)
LOOPBACK_ADDRESSES = ("127.0.0.1",)


@dataclass(frozen=True)
class LoopbackCertificate:
    """A self-signed certificate for 127.0.0.1 / localhost and its private key (PEM)."""

    certificate_pem: bytes
    private_key_pem: bytes
    directory: Path

    @property
    def certificate_file(self) -> Path:
        """The certificate as a file: give it to clients as their trusted root (CA file)."""
        return self.directory / "sandbox-ca.pem"

    @property
    def private_key_file(self) -> Path:
        return self.directory / "sandbox-key.pem"


def _write_private(path: Path, content: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(content)


def make_loopback_certificate(
    *, valid_days: int = 2, directory: Path | None = None
) -> LoopbackCertificate:
    """Generate a fresh P-256 key and self-signed certificate for 127.0.0.1 and localhost.

    The PEM files are written 0600 into ``directory`` (default: a new private temporary
    directory). The certificate is a CA (``BasicConstraints(ca=True)``) so that it can be
    used as the client's root of trust directly.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "audiences sandbox (127.0.0.1)")])
    now = dt.datetime.now(dt.UTC)
    alt_names: list[x509.GeneralName] = [x509.DNSName(host) for host in LOOPBACK_HOSTS]
    alt_names += [x509.IPAddress(ipaddress.ip_address(a)) for a in LOOPBACK_ADDRESSES]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=valid_days))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    certificate_pem = certificate.public_bytes(serialization.Encoding.PEM)
    private_key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    target = directory if directory is not None else Path(tempfile.mkdtemp(prefix="audiences-tls-"))
    target.chmod(0o700)
    material = LoopbackCertificate(certificate_pem, private_key_pem, target)
    _write_private(material.certificate_file, certificate_pem)
    _write_private(material.private_key_file, private_key_pem)
    return material


class LoopbackGrpcSandbox:
    """A gRPC server on 127.0.0.1 behind a throwaway certificate (the Google clients open
    secure channels only). Subclasses give ``_handlers()``; ``_max_workers`` and
    ``_requested_port`` (0: any free port) are set by their ``__init__``."""

    _max_workers: int
    _requested_port: int
    _server: grpc.Server | None = None
    _certificate: LoopbackCertificate | None = None
    port: int = 0

    def _handlers(self) -> Sequence[grpc.GenericRpcHandler]:
        raise NotImplementedError

    def start(self) -> Self:
        self._certificate = make_loopback_certificate()
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self._max_workers),
            options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)],
        )
        server.add_generic_rpc_handlers(self._handlers())
        credentials = grpc.ssl_server_credentials(
            [(self._certificate.private_key_pem, self._certificate.certificate_pem)]
        )
        self.port = server.add_secure_port(f"127.0.0.1:{self._requested_port}", credentials)
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None)
            self._server = None
        if self._certificate is not None:
            shutil.rmtree(self._certificate.directory, ignore_errors=True)
            self._certificate = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> str:
        if self._certificate is None:
            raise RuntimeError("the sandbox is not running")
        return str(self._certificate.certificate_file)


def run_until_interrupted(stop: Callable[[], None] | None = None) -> None:
    """Block until Ctrl-C (a sandbox served in the foreground), then ``stop`` it."""
    try:
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("stopped", flush=True)
    finally:
        if stop is not None:
            stop()
