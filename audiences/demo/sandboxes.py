"""Run the project's own Meta, Google Ads and Data Manager sandboxes (`audiences sandbox`, demo).

All listen on 127.0.0.1 only. The Google Ads and Data Manager sandboxes serve TLS with a
certificate made at start; their CAs are copied to ``.audiences/sandbox/ca.pem`` and
``.audiences/sandbox/data-manager-ca.pem`` where the template's ``ca_file`` settings point. Tokens are the sandbox defaults unless the environment sets them.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SANDBOX_ENV = {
    "META_ACCESS_TOKEN": "sandbox-demo-token",
    "GOOGLE_ADS_DEVELOPER_TOKEN": "sandbox.developer.token",
    "GOOGLE_ADS_ACCESS_TOKEN": "sandbox-access-token",
    "GOOGLE_DATA_MANAGER_ACCESS_TOKEN": "sandbox-data-manager-token",
}


@dataclass
class Sandboxes:
    meta: Any
    google: Any
    ca_file: Path
    data_manager: Any = None
    data_manager_ca_file: Path | None = None

    @property
    def meta_url(self) -> str:
        return str(self.meta.url)

    @property
    def google_endpoint(self) -> str:
        return str(self.google.endpoint)

    @property
    def data_manager_endpoint(self) -> str:
        return str(self.data_manager.endpoint)


@contextmanager
def running(
    project: Path,
    *,
    meta_port: int = 0,
    google_port: int = 0,
    google_polls: int = 1,
    data_manager_port: int = 0,
) -> Iterator[Sandboxes]:
    from connectors.sandbox.data_manager_server import DataManagerSandbox
    from connectors.sandbox.google_ads_server import GoogleAdsSandbox
    from connectors.sandbox.meta_server import MetaSandbox

    env = {k: os.environ.get(k) or v for k, v in SANDBOX_ENV.items()}
    meta = MetaSandbox(port=meta_port, access_token=env["META_ACCESS_TOKEN"])
    google = GoogleAdsSandbox(
        port=google_port,
        developer_token=env["GOOGLE_ADS_DEVELOPER_TOKEN"],
        access_token=env["GOOGLE_ADS_ACCESS_TOKEN"],
        pending_polls=google_polls,
        running_polls=google_polls,
    )
    data_manager = DataManagerSandbox(
        port=data_manager_port,
        access_token=env["GOOGLE_DATA_MANAGER_ACCESS_TOKEN"],
        processing_polls=google_polls,
    )
    meta.start()
    try:
        google.start()
        try:
            data_manager.start()
            try:
                target = _copy_ca(project, google.ca_file, "ca.pem")
                dm_target = _copy_ca(project, data_manager.ca_file, "data-manager-ca.pem")
                yield Sandboxes(meta, google, target, data_manager, dm_target)
            finally:
                data_manager.stop()
        finally:
            google.stop()
    finally:
        meta.stop()


def _copy_ca(project: Path, ca_file: str, name: str) -> Path:
    target = Path(project) / ".audiences" / "sandbox" / name
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    shutil.copyfile(ca_file, target)
    target.chmod(0o600)
    return target


def serve_forever(
    project: Path, *, meta_port: int, google_port: int, data_manager_port: int = 18767
) -> None:
    with running(
        project, meta_port=meta_port, google_port=google_port, data_manager_port=data_manager_port
    ) as boxes:
        print(f"Meta Graph API sandbox:   {boxes.meta_url}", flush=True)
        print(
            f"Google Ads API sandbox:   {boxes.google_endpoint} (TLS, CA {boxes.ca_file})",
            flush=True,
        )
        print(
            f"Data Manager API sandbox: {boxes.data_manager_endpoint} "
            f"(TLS, CA {boxes.data_manager_ca_file})",
            flush=True,
        )
        print("Tokens (sandbox only; export them before `audiences sync`):", flush=True)
        for key, value in SANDBOX_ENV.items():
            print(f"  export {key}={os.environ.get(key) or value}", flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            print("stopped", flush=True)
