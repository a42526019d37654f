"""The ``google_ads`` destination: Customer Match user lists via google-ads."""

from __future__ import annotations

from typing import Any, ClassVar

import polars as pl

from connectors.base import (
    AudienceConnector,
    BatchOutcome,
    Capabilities,
    DestinationConfig,
)
from connectors.google_ads.config import GoogleAdsDestinationConfig

IDENTIFIERS = [
    "hashed_email",
    "hashed_phone_number",
    "hashed_first_name",
    "hashed_last_name",
    "country_code",
    "postal_code",
]
CONSENT = ["ad_user_data", "ad_personalization"]


class GoogleAdsConnector(AudienceConnector):
    kind: ClassVar[str] = "google_ads"
    config_model: ClassVar[type[DestinationConfig]] = GoogleAdsDestinationConfig
    capabilities: ClassVar[Capabilities] = Capabilities(add=True, remove=True, replace=True)
    layout: ClassVar[str | None] = "google_ads"
    # One journaled batch is one offline user data job; the client splits it into
    # requests of <= 10,000 people / 100,000 identifiers.
    add_batch_size: ClassVar[int] = 500_000
    remove_batch_size: ClassVar[int] = 500_000

    config: GoogleAdsDestinationConfig

    def account(self) -> str:
        return self.config.customer_id

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
            ca_file=self.resolve(self.config.ca_file) if self.config.ca_file else None,
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

    def _send(
        self,
        remote_id: str,
        op: str,
        rows: pl.DataFrame,
        *,
        seq: int,
        last: bool,
        session: dict[str, Any],
    ) -> BatchOutcome:
        outcome = BatchOutcome(op=op, size=rows.height, received=0)
        if op == "remove":
            groups: list[tuple[tuple[str, str] | None, pl.DataFrame]] = [(None, rows)]
        else:
            # People with different consent go in separate jobs; no decision = UNSPECIFIED.
            # Customer Match refuses a job whose consent is DENIED: those people are
            # never sent (the gate should not release them; this is the last guard).
            consent = rows.with_columns(
                [
                    pl.col(c).fill_null("UNSPECIFIED")
                    if c in rows.columns
                    else pl.lit("UNSPECIFIED").alias(c)
                    for c in CONSENT
                ]
            )
            denied = pl.any_horizontal([pl.col(c) == "DENIED" for c in CONSENT])
            refused = consent.filter(denied).height
            outcome.invalid += refused
            if refused:
                outcome.samples.append(f"{refused} with consent DENIED not sent")
            consent = consent.filter(~denied)
            groups = [
                ((str(key[0]), str(key[1])), part)
                for key, part in consent.partition_by(
                    CONSENT, as_dict=True, maintain_order=True
                ).items()
            ]
        for consent_pair, part in groups:
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
            if result.match_rate_range:
                session["match_rate_range"] = result.match_rate_range
        return outcome
