"""The ``google_ads`` destination: Customer Match user lists via google-ads."""

from __future__ import annotations

from typing import Any, ClassVar

import polars as pl

from connectors.base import (
    BatchOutcome,
    DestinationConfig,
    Outgoing,
)
from connectors.google_ads.config import GoogleAdsDestinationConfig
from connectors.google_common import CONSENT, IDENTIFIERS, KEY, GoogleConnector, screen


class GoogleAdsConnector(GoogleConnector):
    kind: ClassVar[str] = "google_ads"
    config_model: ClassVar[type[DestinationConfig]] = GoogleAdsDestinationConfig
    # One journaled batch is one offline user data job; the client splits it into
    # requests of <= 10,000 people / 100,000 identifiers.
    add_batch_size: ClassVar[int] = 500_000
    remove_batch_size: ClassVar[int] = 500_000

    config: GoogleAdsDestinationConfig

    def credentials(self) -> dict[str, tuple[str | None, str]]:
        return {
            "developer_token": (self.config.developer_token_env, "a developer token"),
            "access_token": (self.config.access_token_env, "an OAuth access token"),
        }

    def connect(self, secrets: dict[str, str | None]) -> Any:
        from connectors.google_ads.client import GoogleAdsCustomerMatchClient

        return GoogleAdsCustomerMatchClient(
            self.config.customer_id,
            secrets["developer_token"] or "",
            secrets["access_token"] or "",
            endpoint=self.config.endpoint,
            login_customer_id=self.config.login_customer_id,
            ca_file=self.ca_file(),
            developer_token_env=self.config.developer_token_env,
            access_token_env=self.config.access_token_env,
            poll_seconds=self.config.poll_seconds,
        )

    can_remove_all: ClassVar[bool] = True

    def remove_all(self, remote_id: str) -> BatchOutcome:
        """One offline user data job holding only ``remove_all``."""
        result = self.client.remove_all(remote_id)
        return BatchOutcome(op="clear", size=0, received=int(result.accepted))

    def _create_audience(self, name: str, description: str) -> str:
        return str(
            self.client.create_user_list(name, description, self.config.membership_life_span_days)
        )

    def find_audience(self, name: str) -> str | None:
        return self.client.find_user_list(name)  # type: ignore[no-any-return]

    def _send(self, batch: Outgoing) -> BatchOutcome:
        remote_id, op, rows, session = batch.remote_id, batch.op, batch.rows, batch.session
        outcome = BatchOutcome(op=op, size=rows.height, received=0)
        # Who may not be sent at all (no identifier; adding: consent DENIED, or EEA / UK /
        # CH without both signals GRANTED in the CRM) is refused here, the last guard.
        sendable = screen(rows, outcome, adding=op != "remove")
        if op == "remove":
            groups: list[tuple[tuple[str, str] | None, pl.DataFrame]] = [(None, sendable)]
        else:
            # Customer Match takes consent per job: people with different consent go in
            # separate jobs; no decision = UNSPECIFIED (allowed outside the EEA only).
            consent = sendable.with_columns(
                [
                    pl.col(c).fill_null("UNSPECIFIED")
                    if c in sendable.columns
                    else pl.lit("UNSPECIFIED").alias(c)
                    for c in CONSENT
                ]
            )
            groups = [
                ((str(key[0]), str(key[1])), part)
                for key, part in consent.partition_by(
                    CONSENT, as_dict=True, maintain_order=True
                ).items()
            ]
        for consent_pair, part in groups:
            if not part.height and not (op == "replace" and not session.get("cleared")):
                continue
            members = part.select([c for c in IDENTIFIERS if c in part.columns]).to_dicts()
            # A full refresh empties the list once (remove_all first in the first job).
            replace = op == "replace" and not session.get("cleared")
            result = self.client.upload(
                remote_id,
                members,
                remove=op == "remove",
                consent=consent_pair,
                replace=replace,
            )
            session["cleared"] = session.get("cleared") or replace
            outcome.received += int(result.accepted)
            outcome.invalid += int(result.rejected) + int(result.skipped)
            outcome.samples.extend(sorted(result.rejected_by_code)[:5])
            refused = sorted({row for rows in result.rejected_rows.values() for row in rows})
            if refused and KEY in part.columns:  # refused by the API: not members
                outcome.rejected_keys += part.get_column(KEY).gather(refused).to_list()
            if result.match_rate_range:
                session["match_rate_range"] = result.match_rate_range
        return outcome
