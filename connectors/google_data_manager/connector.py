"""The ``google_data_manager`` destination: Customer Match lists via the Data Manager API.

The sync engine journals each batch before :meth:`send` and records it only when ``send``
returns, so ``send`` returns only once the platform confirmed every request of the
batch (SUCCESS or PARTIAL_SUCCESS; a FAILED request or one still PROCESSING when polling
gives up raises, and the batch is sent again by a later run — ingesting and removing are
idempotent on the platform). People refused before sending (consent DENIED, a region
code that is not ISO 3166-1 alpha-2, no identifier) are returned as ``rejected_keys``:
the engine records them as rejected, not as members (``connectors.google_common.screen``:
in the EEA, the UK and Switzerland only people with both consent signals GRANTED in the
CRM are sent). The people of a PARTIAL_SUCCESS request are returned as ``unknown_keys``:
the platform counts what it refused but does not say who, so the engine keeps them as
unsure and sends them again on the next sync.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import polars as pl

from connectors.base import (
    BatchOutcome,
    DestinationConfig,
    Outgoing,
)
from connectors.google_common import CONSENT, IDENTIFIERS, KEY, GoogleConnector, screen
from connectors.google_data_manager.config import GoogleDataManagerDestinationConfig

if TYPE_CHECKING:
    from connectors.google_data_manager.client import RequestOutcome
    from policies.release import Release


class GoogleDataManagerConnector(GoogleConnector):
    kind: ClassVar[str] = "google_data_manager"
    config_model: ClassVar[type[DestinationConfig]] = GoogleDataManagerDestinationConfig
    # One journaled batch is ten requests of 10,000 people, polled together.
    add_batch_size: ClassVar[int] = 100_000
    remove_batch_size: ClassVar[int] = 100_000

    config: GoogleDataManagerDestinationConfig

    def credentials(self) -> dict[str, tuple[str | None, str]]:
        return {"access_token": (self.config.access_token_env, "an OAuth access token")}

    def connect(self, secrets: dict[str, str | None]) -> Any:
        from connectors.google_data_manager.client import DataManagerClient

        return DataManagerClient(
            self.config.customer_id,
            secrets["access_token"] or "",
            destination=self.name,
            login_customer_id=self.config.login_customer_id,
            endpoint=self.config.endpoint,
            ca_file=self.ca_file(),
            access_token_env=self.config.access_token_env,
            poll_seconds=self.config.poll_seconds,
            max_poll_seconds=self.config.max_poll_seconds,
            poll_timeout_seconds=self.config.poll_timeout_seconds,
        )

    def ensure_audience(self, release: Release, remote_id: str | None = None) -> str:
        """The list's resource name (an id remembered in state becomes one), opened for
        ``release`` as every connector is."""
        if remote_id:
            remote_id = str(self.client.user_list_name(remote_id))
        return super().ensure_audience(release, remote_id)

    def _create_audience(self, name: str, description: str) -> str:
        """The configured list, else the list found by its opaque name, else a new one.

        Finding by name first means a run killed between creating the list and recording
        it does not make a second list.
        """
        if self.config.user_list_id:
            configured = self.client.user_list_name(self.config.user_list_id)
            self.client.get_user_list(configured)  # NOT_FOUND names user_list_id
            return str(configured)
        found = self.client.find_user_list(name)
        if found:
            return str(found)
        return str(
            self.client.create_user_list(name, description, self.config.membership_duration_days)
        )

    def _send(self, batch: Outgoing) -> BatchOutcome:
        remote_id, op, rows, session = batch.remote_id, batch.op, batch.rows, batch.session
        from connectors.google_data_manager.client import raise_failed

        outcome = BatchOutcome(op=op, size=rows.height, received=0)
        sendable = screen(rows, outcome, adding=op != "remove")
        ids: list[str] = []
        if op == "replace" and not session.get("cleared"):
            # the list is emptied, and the platform confirms it, before anything is added
            outcomes, _ = self.client.wait([self.client.remove_all(remote_id)])
            raise_failed(outcomes)
            session["cleared"] = True
        columns = [c for c in IDENTIFIERS + CONSENT if c in sendable.columns]
        if sendable.height:
            ids, _sent = self.client.send_members(
                remote_id,
                sendable.select(columns).iter_rows(named=True),
                remove=op == "remove",
                default_consent=(
                    self.config.default_ad_user_data,
                    self.config.default_ad_personalization,
                ),
                terms_accepted=self.config.accept_customer_match_terms,
                validate_only=False,
            )
        outcomes, _polls = self.client.wait(ids)
        raise_failed(outcomes)
        rejected = sum(o.failed_records for o in outcomes)
        outcome.received += sendable.height - rejected
        outcome.invalid += rejected
        for o in outcomes:
            outcome.samples += [f"{n} {reason}" for reason, n in sorted(o.errors.items())][:5]
            if o.match_rate_range:
                session["match_rate_range"] = o.match_rate_range
        _unknown_members(outcome, outcomes, sendable)
        return outcome


def _unknown_members(
    outcome: BatchOutcome, outcomes: Sequence[RequestOutcome], sent: pl.DataFrame
) -> None:
    """The people of every request that ended PARTIAL_SUCCESS, as ``unknown_keys``.

    The request status counts the refused records per reason but never names them
    (``ErrorInfo.error_counts``), so nobody of such a request is known to be on the list
    or off it. Request ``i`` held rows ``i * MAX_MEMBERS_PER_REQUEST`` onwards, in order.
    """
    from connectors.google_data_manager.client import MAX_MEMBERS_PER_REQUEST

    partial = [i for i, o in enumerate(outcomes) if o.status == "PARTIAL_SUCCESS"]
    if not partial:
        return
    keys = sent.get_column(KEY)
    for i in partial:
        outcome.unknown_keys += keys.slice(
            i * MAX_MEMBERS_PER_REQUEST, MAX_MEMBERS_PER_REQUEST
        ).to_list()
    outcome.samples.append(
        f"{len(outcome.unknown_keys)} people in {len(partial)} PARTIAL_SUCCESS request(s): "
        "the platform does not say which it refused; they are sent again on the next sync"
    )
