"""The ``meta`` destination: Meta Custom Audiences (customer file) via facebook-business."""

from __future__ import annotations

from typing import Any, ClassVar

import polars as pl

from connectors.base import (
    AudienceConnector,
    BatchOutcome,
    Capabilities,
    DestinationConfig,
)
from connectors.meta.config import MetaDestinationConfig

# The multi-key schema we upload (docs/internals.md, "Hashed layouts"); rows are normalized
# and hashed by audiences.crm.identifiers, never by the SDK's own (unfaithful) normaliser.
SCHEMA = ["EXTERN_ID", "EMAIL", "PHONE", "FN", "LN", "ZIP", "CT", "ST", "COUNTRY", "DOBY", "GEN"]


class MetaConnector(AudienceConnector):
    kind: ClassVar[str] = "meta"
    config_model: ClassVar[type[DestinationConfig]] = MetaDestinationConfig
    capabilities: ClassVar[Capabilities] = Capabilities(add=True, remove=True, replace=True)
    layout: ClassVar[str | None] = "meta"
    add_batch_size: ClassVar[int] = 10_000
    remove_batch_size: ClassVar[int] = 10_000

    config: MetaDestinationConfig

    def account(self) -> str:
        return self.config.ad_account_id

    def credentials(self) -> dict[str, tuple[str | None, str]]:
        return {
            "access_token": (self.config.access_token_env, "a Meta access token"),
            "app_secret": (self.config.app_secret_env, "the app secret"),
        }

    def connect(self, secrets: dict[str, str | None]) -> Any:
        from connectors.meta.client import MetaClient

        return MetaClient(
            secrets["access_token"] or "",
            self.config.ad_account_id,
            endpoint=self.config.endpoint,
            api_version=self.config.api_version,
            app_secret=secrets["app_secret"],
            token_env_var=self.config.access_token_env,
        )

    can_delete: ClassVar[bool] = True

    def delete_audience(self, remote_id: str) -> None:
        self.client.delete_audience(remote_id)

    def ensure_audience(self, remote_id: str | None, *, name: str, description: str) -> str:
        if remote_id:
            return remote_id
        return str(
            self.client.create_audience(
                name, description, customer_file_source=self.config.customer_file_source
            )
        )

    def send(
        self,
        remote_id: str,
        op: str,
        rows: pl.DataFrame,
        *,
        seq: int,
        last: bool,
        session: dict[str, Any],
    ) -> BatchOutcome:
        from connectors.meta.client import new_session_id, upload_session

        data = rows.select([pl.col(c).fill_null("") for c in SCHEMA]).rows()
        if op == "remove":
            result = self.client.remove(remote_id, SCHEMA, data)
        else:
            session_id = session.setdefault("session_id", new_session_id())
            session["batch_seq"] = session.get("batch_seq", 0) + 1
            params = upload_session(
                session_id,
                session["batch_seq"],
                last=last,
                estimated_total=int(session.get("total", len(data))),
            )
            upload = self.client.replace if op == "replace" else self.client.add
            result = upload(remote_id, SCHEMA, data, params)
        return BatchOutcome(
            op=op,
            size=len(data),
            received=int(result.num_received) - int(result.num_invalid_entries),
            invalid=int(result.num_invalid_entries),
            samples=[str(k) for k in list(result.invalid_entry_samples)[:5]],
        )
