"""Run the project's own Meta and Google Ads sandboxes (for `audiences sandbox` and the demo).

Both listen on 127.0.0.1 only. The Google Ads sandbox serves TLS with a certificate
made at start; its CA is copied to ``.audiences/sandbox/ca.pem`` where the template's
``ca_file`` points. Tokens are the sandbox defaults unless the environment sets them.
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
}


@dataclass
class Sandboxes:
    meta: Any
    google: Any
    ca_file: Path

    @property
    def meta_url(self) -> str:
        return str(self.meta.url)

    @property
    def google_endpoint(self) -> str:
        return str(self.google.endpoint)


@contextmanager
def running(
    project: Path, *, meta_port: int = 0, google_port: int = 0, google_polls: int = 1
) -> Iterator[Sandboxes]:
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
    meta.start()
    try:
        google.start()
        try:
            target = Path(project) / ".audiences" / "sandbox" / "ca.pem"
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            shutil.copyfile(google.ca_file, target)
            target.chmod(0o600)
            yield Sandboxes(meta=meta, google=google, ca_file=target)
        finally:
            google.stop()
    finally:
        meta.stop()


def serve_forever(project: Path, *, meta_port: int, google_port: int) -> None:
    with running(project, meta_port=meta_port, google_port=google_port) as boxes:
        print(f"Meta Graph API sandbox:   {boxes.meta_url}", flush=True)
        print(
            f"Google Ads API sandbox:   {boxes.google_endpoint} (TLS, CA {boxes.ca_file})",
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
