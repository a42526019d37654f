"""The ``meta`` destination: Meta Custom Audiences (customer file) via facebook-business."""

from __future__ import annotations

from typing import Any, ClassVar

import polars as pl

from connectors.base import (
    AudienceConnector,
    BatchOutcome,
    Capabilities,
    DestinationConfig,
    Outgoing,
)
from connectors.meta.config import MetaDestinationConfig
from connectors.meta.errors import FLAGGED_STATUS, MetaAudienceFlagged
from policies.sendable import META_SENT

# The multi-key schema we upload (docs/internals.md, "Hashed layouts"); rows are normalized
# and hashed by audiences.crm.identifiers, never by the SDK's own (unfaithful) normaliser.
# The gate counts and releases only people these columns name to Meta (policies/sendable.py).
SCHEMA = list(META_SENT)


class MetaConnector(AudienceConnector):
    kind: ClassVar[str] = "meta"
    config_model: ClassVar[type[DestinationConfig]] = MetaDestinationConfig
    capabilities: ClassVar[Capabilities] = Capabilities(add=True, remove=True, replace=True)
    layout: ClassVar[str | None] = "meta"
    add_batch_size: ClassVar[int] = 10_000
    remove_batch_size: ClassVar[int] = 10_000

    config: MetaDestinationConfig
    _flagged: bool = False  # Meta flagged the open audience (operation_status 471)

    def account(self) -> str:  # canonical, as the gate's: act_0123 is act_123
        number = self.config.ad_account_id.removeprefix("act_")
        return f"act_{int(number)}" if number.isascii() and number.isdigit() else number

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

    def _create_audience(self, name: str, description: str) -> str:
        return str(
            self.client.create_audience(
                name, description, customer_file_source=self.config.customer_file_source
            )
        )

    def _check_audience(self, remote_id: str) -> None:
        # An audience Meta flagged on an earlier run takes no more adds (removals still go).
        self._flagged = self._status_code(remote_id) == FLAGGED_STATUS

    def _status_code(self, remote_id: str) -> int | None:
        """The audience's ``operation_status`` code (docs/platforms.md, "Health flag")."""
        answer = self.client.get_audience(remote_id, ("id", "operation_status"))
        status = answer.get("operation_status")
        code = status.get("code") if isinstance(status, dict) else None
        return int(code) if isinstance(code, int | str) and str(code).isdigit() else None

    def _flagged_error(self, remote_id: str, when: str) -> MetaAudienceFlagged:
        name = self.release.opaque_name if self.release is not None else "?"
        return MetaAudienceFlagged(
            f"Meta flagged audience {remote_id} ({name}) as suggesting a health condition "
            f"(operation_status {FLAGGED_STATUS}) {when}; no more people are added to it",
            "its name and description are already neutral release codes, so the segment "
            "itself reads as a health condition: compliance must review and change the "
            "segment's definition (or stop sending it to Meta) before it is synced again; "
            "removals still go through",
            code=FLAGGED_STATUS,
        )

    def _send(self, batch: Outgoing) -> BatchOutcome:
        remote_id, op, rows, session = batch.remote_id, batch.op, batch.rows, batch.session
        from connectors.meta.client import new_session_id, upload_session

        if op != "remove" and self._flagged:
            raise self._flagged_error(remote_id, "on an earlier upload")
        data = rows.select([pl.col(c).fill_null("") for c in SCHEMA]).rows()
        if op == "remove":
            result = self.client.remove(remote_id, SCHEMA, data)
        else:
            session_id = session.setdefault("session_id", new_session_id())
            session["batch_seq"] = session.get("batch_seq", 0) + 1
            params = upload_session(
                session_id,
                session["batch_seq"],
                last=batch.last,
                estimated_total=int(session.get("total", len(data))),
            )
            upload = self.client.replace if op == "replace" else self.client.add
            result = upload(remote_id, SCHEMA, data, params)
        # After every upload: Meta's classifier may flag the audience (status 471). Adds
        # stop at once; removals (which the law may require) go on, and the next add
        # batch, in this run or the next, reports the flag.
        self._flagged = self._flagged or self._status_code(remote_id) == FLAGGED_STATUS
        if self._flagged and op != "remove":
            raise self._flagged_error(remote_id, f"after {op} batch {batch.seq}")
        return BatchOutcome(
            op=op,
            size=len(data),
            received=int(result.num_received) - int(result.num_invalid_entries),
            invalid=int(result.num_invalid_entries),
            samples=[str(k) for k in list(result.invalid_entry_samples)[:5]],
        )
