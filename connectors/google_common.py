"""What the two Google destinations (``google_ads``, ``google_data_manager``) share.

Both upload the ``google_ads`` identifier layout (``audiences.crm.identifiers``) plus the
consent signals ``ad_user_data`` / ``ad_personalization`` to a Customer Match list of one
Google Ads account, so they share its settings (:class:`GoogleAccountConfig`), the last
guard before sending (:func:`screen`: who may not be sent at all), and what their gRPC
clients have in common (:class:`GoogleApiError`, :class:`GoogleClient`: retries with the
one policy, attempts counted, the SDK logger kept quiet).

Consent in the EEA. Google's EU user consent policy requires both signals GRANTED for
the data of users in the EEA (and, under the same policy, the UK and Switzerland); the
API refuses to use it otherwise. A member whose address country is one of
:data:`CONSENT_REGIONS`, or whose country is unknown (the CRM value was not recognised:
they may be anywhere), is sent only with both signals GRANTED **from the CRM's consent
columns** — never on a request-level default and never UNSPECIFIED: a config that maps
no consent column uploads nobody from those countries.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypedDict

import polars as pl
from pydantic import Field, field_validator

from audiences.core.errors import ConnectorError
from connectors.base import AudienceConnector, Capabilities, Closing, DestinationConfig
from connectors.retry import RetryPolicy
from policies.sendable import (
    ADDRESS,
    CONSENT,
    IDENTIFIERS,
    NO_IDENTIFIER,
    bad_region,
    google_refusals,
)

if TYPE_CHECKING:
    from connectors.base import BatchOutcome

KEY = "member_key"
EMAIL, PHONE, FIRST_NAME, LAST_NAME, COUNTRY, POSTAL_CODE = IDENTIFIERS
CONSENT_VALUES = ("GRANTED", "DENIED", "UNSPECIFIED")


def customer_id(value: str | None) -> str | None:
    """A Google Ads customer id as 10 digits (dashes dropped); None stays None."""
    if value is None:
        return None
    digits = value.replace("-", "")
    if len(digits) != 10 or not digits.isdigit():
        raise ValueError("must be a 10-digit Google Ads customer id, e.g. 123-456-7890")
    return digits


class GoogleAccountConfig(DestinationConfig):
    """Settings every Google destination has: the account, the endpoint, the minimum."""

    customer_id: str = Field(description="the Google Ads account that owns the list: 123-456-7890")
    login_customer_id: str | None = Field(None, description="manager account, if one links it")
    endpoint: str | None = Field(None, description="host:port override (sandbox)")
    ca_file: str | None = Field(None, description="CA bundle for a TLS endpoint override")
    min_size: int = Field(100, ge=1)

    @field_validator("customer_id", "login_customer_id")
    @classmethod
    def _ten_digits(cls, value: str | None) -> str | None:
        return customer_id(value)


class GoogleConnector(AudienceConnector):
    """Both Google kinds: a Customer Match list of one Google Ads account (difference
    protection and takedown treat the two kinds as the same account), the ``google_ads``
    layout, adds, removes and replaces."""

    capabilities: ClassVar[Capabilities] = Capabilities(add=True, remove=True, replace=True)
    layout: ClassVar[str | None] = "google_ads"
    config: GoogleAccountConfig

    def account(self) -> str:
        return self.config.customer_id

    def ca_file(self) -> str | None:
        """The configured CA file, resolved against the project folder (None: system roots)."""
        return self.resolve(self.config.ca_file) if self.config.ca_file else None


def screen(rows: pl.DataFrame, outcome: BatchOutcome, *, adding: bool) -> pl.DataFrame:
    """The rows that may be sent; the others are counted in ``outcome`` (``invalid``, a
    sample per reason) and returned as its ``rejected_keys``.

    An address whose region code is not ISO 3166-1 alpha-2 is dropped (the person's other
    identifiers still go). Not sent (:func:`policies.sendable.google_refusals`, which the
    gate's counts use too): a person left with no identifier (when removing, not refused
    either: there is nothing to remove); when adding, one whose consent is DENIED, or one in
    :data:`CONSENT_REGIONS` (or of unknown country) without both signals GRANTED.
    """
    texts = [c for c in (*CONSENT, "country_code") if c in rows.columns]
    frame = rows.with_columns(pl.col(texts).cast(pl.String))  # an all-null column is Null-typed
    if "country_code" in frame.columns:
        dropped = frame.filter(bad_region()).height
        if dropped:
            outcome.samples.append(
                f"{dropped} addresses without an ISO 3166-1 alpha-2 region code not sent "
                "(fix [identity] country / default_country)"
            )
            frame = frame.with_columns(
                [
                    pl.when(bad_region()).then(None).otherwise(pl.col(c)).alias(c)
                    for c in ADDRESS
                    if c in frame.columns
                ]
            )
    reasons = google_refusals(frame.columns, adding=adding)
    if not adding:
        # nothing names them to the platform, so nothing of theirs is there to remove: they
        # are not sent, and leave state with the batch (a refused removal would stay forever)
        no_identifier = reasons[NO_IDENTIFIER]
        nameless = frame.filter(no_identifier).height
        if nameless:
            outcome.samples.append(f"{nameless} without an identifier: nothing to remove")
        return frame.filter(~no_identifier)
    return _refuse(frame, reasons, outcome)


def _refuse(
    frame: pl.DataFrame, reasons: dict[str, pl.Expr], outcome: BatchOutcome
) -> pl.DataFrame:
    """``frame`` without the rows any reason refuses; those counted, sampled and keyed."""
    names = [f"__refused_{i}" for i in range(len(reasons))]
    flagged = frame.with_columns([e.alias(n) for n, e in zip(names, reasons.values(), strict=True)])
    refused = pl.any_horizontal([pl.col(n) for n in names])
    out = flagged.filter(refused)
    if out.height:
        counts = out.select([pl.col(n).sum() for n in names]).row(0)
        outcome.invalid += out.height
        outcome.samples += [
            f"{n} not sent: {reason}" for reason, n in zip(reasons, counts, strict=True) if n
        ]
        if KEY in out.columns:
            outcome.rejected_keys.extend(out.get_column(KEY).to_list())
    return flagged.filter(~refused).drop(names)


# ---------------------------------------------------------------------------- clients


class GoogleApiError(ConnectorError):
    """A Google API call failed (Google Ads or Data Manager). ``code`` is the error code or
    the gRPC status; ``retry_after_s`` is the server's RetryInfo, when it sent one."""

    def __init__(
        self,
        what: str,
        fix: str | None = None,
        *,
        code: str | None = None,
        transient: bool = False,
        request_id: str | None = None,
        retry_after_s: float | None = None,
        where: str | None = None,
    ) -> None:
        self.request_id = request_id
        self.retry_after_s = retry_after_s
        super().__init__(what, fix, where=where, transient=transient, code=code)


def request_id(call: Any) -> str | None:
    """The ``request-id`` trailing metadata of a gRPC call (None: no call, or none sent)."""
    try:
        metadata = call.trailing_metadata() or () if call is not None else ()
    except Exception:  # a transport failure may carry no call
        return None
    for key, value in metadata:
        if key == "request-id":
            return str(value)
    return None


def counted_attempts(error: ConnectorError, attempts: int, why: str) -> ConnectorError:
    """A transient error given up on, its message saying how many attempts were made."""
    if not isinstance(error, GoogleApiError):
        return error
    return type(error)(
        f"{error.what} after {attempts} attempts ({why})",
        error.fix,
        code=str(error.code),
        transient=True,
        request_id=error.request_id,
    )


class RetryOptions(TypedDict, total=False):
    """Keyword options of both Google clients: attempts, backoff, RPC deadline, and the
    sleep function (tests record the waits instead of waiting)."""

    max_attempts: int
    backoff_seconds: float
    max_backoff_seconds: float
    rpc_timeout_seconds: float
    sleep: Callable[[float], None]


class GoogleClient(Closing):
    """What both Google clients share: the SDK logger kept at WARNING (at DEBUG it prints
    whole requests), one retry policy whose attempts are counted, and ``with`` support."""

    platform: ClassVar[str]  # "Google Ads", "Data Manager": in log lines
    _log: ClassVar[logging.Logger]

    def __init__(
        self,
        *,
        sdk_logger: str,
        max_attempts: int = 5,
        backoff_seconds: float = 1.0,
        max_backoff_seconds: float = 60.0,
        rpc_timeout_seconds: float = 600.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        logging.getLogger(sdk_logger).setLevel(logging.WARNING)
        self.retry = RetryPolicy(
            max_attempts=max_attempts, base_delay_s=backoff_seconds, max_delay_s=max_backoff_seconds
        )
        self._rpc_timeout = rpc_timeout_seconds
        self._sleep = sleep
        self._random = random.Random()
        self.retries = 0

    def _retried(self, attempt: Callable[[int], Any], action: str) -> Any:
        """``attempt(number)`` under the retry policy; every retry logged and counted."""

        def log_retry(error: ConnectorError, number: int, delay: float) -> None:
            self._log.info(
                "%s %s: %s; retry %d of %d in %.2fs",
                self.platform,
                action,
                error.code,
                number,
                self.retry.max_attempts - 1,
                delay,
            )
            self.retries += 1

        return self.retry.call(
            attempt,
            sleep=self._sleep,
            rng=self._random,
            on_retry=log_retry,
            on_give_up=counted_attempts,
        )


def values(value: str | Sequence[str] | None) -> list[str]:
    """A member's identifier cell as a list of non-empty values (one or several)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    return [v for v in value if v]
