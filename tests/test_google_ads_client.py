"""GoogleAdsCustomerMatchClient: the real google-ads SDK against the TLS sandbox on 127.0.0.1."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from audiences.core.errors import ConfigError
from connectors.google_ads.client import (
    SDK_LOGGER,
    GoogleAdsCustomerMatchClient,
    JobResult,
)
from connectors.google_ads.errors import (
    CustomerDataTermsNotAccepted,
    CustomerMatchNotAllowlisted,
    GoogleAdsAuthError,
    GoogleAdsRequestInvalid,
    GoogleAdsTransientError,
    OfflineJobFailed,
)
from connectors.sandbox.google_ads_server import GoogleAdsSandbox

DEVELOPER_TOKEN = "dev-token-7f3a"
ACCESS_TOKEN = "ya29.access-token-b81c"
ADD = "AddOfflineUserDataJobOperations"
GRANTED = ("GRANTED", "GRANTED")


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def people(start: int, stop: int) -> list[dict[str, str]]:
    return [
        {"hashed_email": sha(f"p{i}@example.com"), "hashed_phone_number": sha(f"+1555{i:07d}")}
        for i in range(start, stop)
    ]


def as_members(
    rows: list[dict[str, str]], *, addresses: bool = False
) -> frozenset[frozenset[tuple[str, str]]]:
    """What the sandbox should hold for ``rows`` — built independently of the client."""
    if not addresses:
        return frozenset(frozenset(row.items()) for row in rows)
    parts = ("hashed_first_name", "hashed_last_name", "country_code", "postal_code")
    return frozenset(
        frozenset(
            {
                ("hashed_email", row["hashed_email"]),
                ("address_info", ":".join(row[k] for k in parts)),
            }
        )
        for row in rows
    )


@pytest.fixture
def sandbox() -> Iterator[GoogleAdsSandbox]:
    with GoogleAdsSandbox(
        developer_token=DEVELOPER_TOKEN,
        access_token=ACCESS_TOKEN,
        pending_polls=1,
        running_polls=1,
    ) as server:
        yield server


@pytest.fixture
def sleeps() -> list[float]:
    return []


def make_client(
    sandbox: GoogleAdsSandbox, sleeps: list[float], **options: object
) -> GoogleAdsCustomerMatchClient:
    settings: dict[str, object] = {
        "endpoint": sandbox.endpoint,
        "ca_file": sandbox.ca_file,
        "backoff_seconds": 0.5,
        "poll_seconds": 2.0,
        "sleep": sleeps.append,  # record the waits instead of waiting
    }
    settings.update(options)
    return GoogleAdsCustomerMatchClient(
        str(settings.pop("customer_id", sandbox.customer_id)),
        str(settings.pop("developer_token", DEVELOPER_TOKEN)),
        str(settings.pop("access_token", ACCESS_TOKEN)),
        **settings,  # type: ignore[arg-type]
    )


@pytest.fixture
def client(
    sandbox: GoogleAdsSandbox, sleeps: list[float]
) -> Iterator[GoogleAdsCustomerMatchClient]:
    with make_client(sandbox, sleeps) as ads:
        yield ads


@pytest.fixture
def user_list(client: GoogleAdsCustomerMatchClient) -> str:
    return client.create_user_list("seg-7c1e", "release 4f2a", 90)


# ---------------------------------------------------------------- lists and uploads


def test_create_user_list(sandbox: GoogleAdsSandbox, client: GoogleAdsCustomerMatchClient) -> None:
    resource = client.create_user_list("seg-1", "opaque", 30)
    assert resource.startswith(f"customers/{sandbox.customer_id}/userLists/")
    stored = sandbox.user_lists[resource]
    assert (stored.name, stored.description, stored.membership_life_span) == ("seg-1", "opaque", 30)
    assert stored.upload_key_type.name == "CONTACT_INFO"
    assert client.user_list_size(resource) == 0


@pytest.mark.parametrize("days", [-1, 541])
def test_membership_life_span_is_checked_before_sending(
    sandbox: GoogleAdsSandbox, client: GoogleAdsCustomerMatchClient, days: int
) -> None:
    with pytest.raises(GoogleAdsRequestInvalid, match="use 0 to 540 days"):
        client.create_user_list("seg-1", "opaque", days)
    assert sandbox.calls == []


def test_upload_25000_in_three_requests(
    sandbox: GoogleAdsSandbox, client: GoogleAdsCustomerMatchClient, user_list: str
) -> None:
    rows = people(0, 25_000)
    result = client.upload(user_list, rows, remove=False, consent=GRANTED)
    assert (result.requests, result.sent, result.accepted, result.rejected) == (
        3,
        25_000,
        25_000,
        0,
    )
    assert result.status == "SUCCESS" and result.operation == "add"
    assert sandbox.call_count(ADD, "OK") == 3
    assert sandbox.members(user_list) == as_members(rows)
    assert client.user_list_size(user_list) == 25_000


def test_remove_then_replace(
    sandbox: GoogleAdsSandbox, client: GoogleAdsCustomerMatchClient, user_list: str
) -> None:
    client.upload(user_list, people(0, 300), remove=False, consent=GRANTED, batch_size=100)
    removed = client.upload(user_list, people(0, 120), remove=True, consent=None, batch_size=100)
    assert (removed.operation, removed.sent, removed.requests) == ("remove", 120, 2)
    assert sandbox.members(user_list) == as_members(people(120, 300))

    replaced = client.upload(
        user_list, people(1000, 1050), remove=False, consent=GRANTED, replace=True
    )
    assert replaced.replaced and replaced.sent == 50
    assert sandbox.members(user_list) == as_members(people(1000, 1050))
    jobs = list(sandbox.jobs.values())
    assert [sorted(job.kinds) for job in jobs] == [["create"], ["remove"], ["create"]]
    assert jobs[2].staged[0] == ("remove_all", None)


def test_replace_with_nobody_empties_the_list(
    sandbox: GoogleAdsSandbox, client: GoogleAdsCustomerMatchClient, user_list: str
) -> None:
    client.upload(user_list, people(0, 10), remove=False, consent=GRANTED)
    result = client.upload(user_list, [], remove=False, consent=GRANTED, replace=True)
    assert (result.sent, result.requests) == (0, 1)
    assert sandbox.members(user_list) == frozenset()


def test_address_and_several_emails_make_one_person(
    sandbox: GoogleAdsSandbox, client: GoogleAdsCustomerMatchClient, user_list: str
) -> None:
    person = {
        "hashed_email": [sha("a@x.com"), sha("a2@x.com")],
        "hashed_phone_number": None,
        "hashed_first_name": sha("jose"),
        "hashed_last_name": sha("smith"),
        "country_code": "US",
        "postal_code": "10001",
    }
    incomplete = {"hashed_first_name": sha("ann"), "country_code": "US", "postal_code": "10001"}
    result = client.upload(user_list, [person, incomplete], remove=False, consent=GRANTED)
    assert (result.sent, result.skipped) == (1, 1)
    assert sandbox.members(user_list) == {
        frozenset(
            {
                ("hashed_email", sha("a@x.com")),
                ("hashed_email", sha("a2@x.com")),
                ("address_info", f"{sha('jose')}:{sha('smith')}:US:10001"),
            }
        )
    }


def test_requests_also_split_at_100000_identifiers(
    sandbox: GoogleAdsSandbox, client: GoogleAdsCustomerMatchClient, user_list: str
) -> None:
    rows = [{"hashed_email": [sha(f"{i}-{j}@x.com") for j in range(20)]} for i in range(5_001)]
    result = client.upload(user_list, rows, remove=False, consent=GRANTED)
    assert (result.requests, result.accepted) == (2, 5_001)
    assert sandbox.call_count(ADD, "OK") == 2


def test_nobody_to_send_creates_no_job(
    sandbox: GoogleAdsSandbox, client: GoogleAdsCustomerMatchClient, user_list: str
) -> None:
    result = client.upload(user_list, [{"hashed_email": None}], remove=True, consent=None)
    assert (result.job, result.sent, result.skipped, result.requests) == (None, 0, 1, 0)
    assert sandbox.jobs == {}


def test_more_than_20_identifiers_refused_before_sending(
    client: GoogleAdsCustomerMatchClient, user_list: str
) -> None:
    rows = [*people(0, 3), {"hashed_email": [sha(f"{j}@x.com") for j in range(21)]}]
    result = client.upload(user_list, rows, remove=False, consent=GRANTED)
    assert (result.sent, result.accepted, result.rejected) == (3, 3, 1)
    assert result.rejected_rows == {"TOO_MANY_USER_IDENTIFIERS": (3,)}


def test_partial_failure_reported_per_row(
    sandbox: GoogleAdsSandbox, client: GoogleAdsCustomerMatchClient, user_list: str
) -> None:
    rows = people(0, 250)
    rows[137] = {**rows[137], "hashed_phone_number": "not-a-sha256"}
    rows[201] = {"hashed_email": sha("x@x.com").upper()}
    result = client.upload(user_list, rows, remove=False, consent=GRANTED, batch_size=100)
    assert result.rejected_by_code == {"INVALID_SHA256_FORMAT": 2}
    assert result.rejected_rows == {"INVALID_SHA256_FORMAT": (137, 201)}
    assert (result.sent, result.accepted, result.rejected) == (250, 248, 2)
    assert sandbox.members(user_list) == as_members(
        [r for i, r in enumerate(rows) if i not in (137, 201)]
    )


# ---------------------------------------------------------------- consent


@pytest.mark.parametrize(
    "consent", [("DENIED", "GRANTED"), ("GRANTED", "DENIED"), ("denied", "denied")]
)
def test_denied_consent_refused_before_anything_is_sent(
    sandbox: GoogleAdsSandbox,
    client: GoogleAdsCustomerMatchClient,
    user_list: str,
    consent: tuple[str, str],
) -> None:
    calls_before = len(sandbox.calls)
    with pytest.raises(CustomerDataTermsNotAccepted, match="nothing was sent"):
        client.upload(user_list, people(0, 5), remove=False, consent=consent)
    assert len(sandbox.calls) == calls_before
    assert sandbox.jobs == {}


@pytest.mark.parametrize(
    ("consent", "refused"),
    [(("UNSPECIFIED", "UNSPECIFIED"), 2), (("GRANTED", "UNSPECIFIED"), 2), (GRANTED, 0)],
)
def test_the_sandbox_refuses_eea_people_without_both_signals_granted(
    sandbox: GoogleAdsSandbox,
    client: GoogleAdsCustomerMatchClient,
    user_list: str,
    consent: tuple[str, str],
    refused: int,
) -> None:
    rows = [
        {
            "hashed_email": sha(f"e{i}@x.com"),
            "hashed_first_name": sha(f"f{i}"),
            "hashed_last_name": sha(f"l{i}"),
            "country_code": country,
            "postal_code": "10115",
        }
        for i, country in enumerate(["DE", "US", "FR", "CA"])
    ]
    result = client.upload(user_list, rows, remove=False, consent=consent)
    eea = (0, 2) if refused else ()
    assert result.rejected_rows == (
        {"CUSTOMER_NOT_ACCEPTED_CUSTOMER_DATA_TERMS": eea} if refused else {}
    )
    assert sandbox.members(user_list) == as_members(
        [r for i, r in enumerate(rows) if i not in eea], addresses=True
    )


@pytest.mark.parametrize(
    ("consent", "error", "pattern"),
    [
        (None, CustomerDataTermsNotAccepted, "need consent"),
        (("YES", "GRANTED"), GoogleAdsRequestInvalid, "'YES' is not one of"),
    ],
)
def test_bad_consent_for_adds(
    client: GoogleAdsCustomerMatchClient,
    user_list: str,
    consent: tuple[str, str] | None,
    error: type[Exception],
    pattern: str,
) -> None:
    with pytest.raises(error, match=pattern):
        client.upload(user_list, people(0, 5), remove=False, consent=consent)


def test_removals_need_no_consent(
    sandbox: GoogleAdsSandbox, client: GoogleAdsCustomerMatchClient, user_list: str
) -> None:
    client.upload(user_list, people(0, 5), remove=False, consent=GRANTED)
    client.upload(user_list, people(0, 2), remove=True, consent=("DENIED", "DENIED"))
    assert sandbox.members(user_list) == as_members(people(2, 5))


# ---------------------------------------------------------------- retries and polling


@pytest.mark.parametrize(
    ("kind", "method"),
    [
        ("concurrent_modification", ADD),
        ("unavailable", ADD),
        ("unavailable", "CreateOfflineUserDataJob"),
        ("resource_exhausted", "Search"),
        ("internal", "RunOfflineUserDataJob"),
        ("deadline_exceeded", "MutateUserLists"),
    ],
)
def test_transient_failures_are_retried(
    sandbox: GoogleAdsSandbox,
    client: GoogleAdsCustomerMatchClient,
    sleeps: list[float],
    kind: str,
    method: str,
) -> None:
    sandbox.inject(kind, method=method, times=2)  # type: ignore[arg-type]
    user_list = client.create_user_list("seg-r", "opaque", 30)
    result = client.upload(user_list, people(0, 50), remove=False, consent=GRANTED)
    assert result.retries == (0 if method == "MutateUserLists" else 2)
    assert client.retries == 2
    assert sandbox.pending_faults() == 0
    assert sandbox.call_count(method) - sandbox.call_count(method, "OK") == 2
    assert sandbox.members(user_list) == as_members(people(0, 50))
    backoffs = sleeps[:2]
    assert 0.25 <= backoffs[0] <= 0.5 and 0.5 <= backoffs[1] <= 1.0  # exponential, jittered


def test_slow_response_hits_the_deadline_and_is_retried(
    sandbox: GoogleAdsSandbox, sleeps: list[float]
) -> None:
    with make_client(sandbox, sleeps, rpc_timeout_seconds=0.2) as ads:
        sandbox.inject("slow", method="Search", delay=0.6)
        user_list = ads.create_user_list("seg-s", "opaque", 30)
        assert ads.user_list_size(user_list) == 0
    assert ads.retries == 1


def test_retries_give_up_after_max_attempts(sandbox: GoogleAdsSandbox, sleeps: list[float]) -> None:
    with make_client(sandbox, sleeps, max_attempts=3) as ads:
        sandbox.inject("concurrent_modification", method="MutateUserLists", times=5)
        with pytest.raises(
            GoogleAdsTransientError, match=r"CONCURRENT_MODIFICATION.*after 3 attempts"
        ) as caught:
            ads.create_user_list("seg-g", "opaque", 30)
    assert caught.value.transient
    assert caught.value.request_id
    assert sandbox.call_count("MutateUserLists") == 3


def test_polls_with_exponential_backoff_until_success(
    sandbox: GoogleAdsSandbox, sleeps: list[float]
) -> None:
    sandbox.pending_polls, sandbox.running_polls = 2, 4
    with make_client(sandbox, sleeps, poll_seconds=5.0, max_poll_seconds=30.0) as ads:
        user_list = ads.create_user_list("seg-p", "opaque", 30)
        result = ads.upload(user_list, people(0, 10), remove=False, consent=GRANTED)
    assert (result.status, result.polls) == ("SUCCESS", 7)
    assert sleeps == [5.0, 10.0, 20.0, 30.0, 30.0, 30.0]
    assert result.match_rate_range == "MATCH_RANGE_91_TO_100"
    assert sandbox.members(user_list) == as_members(people(0, 10))


def test_run_retried_after_a_lost_answer_is_not_an_error(
    sandbox: GoogleAdsSandbox, client: GoogleAdsCustomerMatchClient, user_list: str
) -> None:
    # The first run reaches the server but its answer is lost (deadline): the retry
    # finds the job started, which means it ran.
    sandbox.inject("slow", method="RunOfflineUserDataJob", delay=0.4)
    client._rpc_timeout = 0.2
    result = client.upload(user_list, people(0, 10), remove=False, consent=GRANTED)
    assert result.status == "SUCCESS"
    assert sandbox.call_count("RunOfflineUserDataJob", "INVALID_ARGUMENT") == 1
    assert client.retries == 1


def test_failed_job_is_reported(
    sandbox: GoogleAdsSandbox, client: GoogleAdsCustomerMatchClient, user_list: str
) -> None:
    sandbox.inject("job_failed")
    with pytest.raises(OfflineJobFailed, match="ended FAILED"):
        client.upload(user_list, people(0, 10), remove=False, consent=GRANTED)
    assert sandbox.members(user_list) == frozenset()


def test_job_still_running_after_the_timeout(
    sandbox: GoogleAdsSandbox, sleeps: list[float]
) -> None:
    sandbox.pending_polls = 100
    with make_client(sandbox, sleeps, poll_seconds=1.0, poll_timeout_seconds=0.5) as ads:
        user_list = ads.create_user_list("seg-t", "opaque", 30)
        with pytest.raises(OfflineJobFailed, match="still PENDING") as caught:
            ads.upload(user_list, people(0, 3), remove=False, consent=GRANTED)
    assert caught.value.transient


# ---------------------------------------------------------------- terminal errors


def test_not_allowlisted_points_to_the_data_manager_api(
    sandbox: GoogleAdsSandbox, client: GoogleAdsCustomerMatchClient, user_list: str
) -> None:
    sandbox.allowlisted = False
    with pytest.raises(CustomerMatchNotAllowlisted) as caught:
        client.upload(user_list, people(0, 5), remove=False, consent=GRANTED)
    message = str(caught.value)
    assert "CUSTOMER_NOT_ALLOWLISTED_FOR_THIS_FEATURE" in message
    assert "Data Manager API" in message
    assert 'kind = "google_data_manager"' in message
    assert "GOOGLE_DATA_MANAGER_ACCESS_TOKEN" in message
    assert not caught.value.transient
    assert sandbox.call_count("CreateOfflineUserDataJob") == 1  # not retried


@pytest.mark.parametrize(
    ("options", "fault", "pattern"),
    [
        (
            {"access_token": "ya29.expired-token-9d2e"},
            False,
            "OAUTH_TOKEN_INVALID.*GOOGLE_ADS_ACCESS_TOKEN",
        ),
        ({}, True, "OAUTH_TOKEN_INVALID.*GOOGLE_ADS_ACCESS_TOKEN"),
        (
            {"developer_token": "dev-token-wrong"},
            False,
            "DEVELOPER_TOKEN_INVALID.*GOOGLE_ADS_DEVELOPER_TOKEN",
        ),
        ({"access_token_env": "ACME_GADS_TOKEN"}, True, "ACME_GADS_TOKEN"),
        ({"customer_id": "999-999-9999"}, False, "USER_PERMISSION_DENIED.*login_customer_id"),
    ],
)
def test_auth_errors_are_terminal_and_name_the_variable(
    sandbox: GoogleAdsSandbox,
    sleeps: list[float],
    options: dict[str, str],
    fault: bool,
    pattern: str,
) -> None:
    if fault:
        sandbox.inject("auth")
    with (
        make_client(sandbox, sleeps, **options) as ads,
        pytest.raises(GoogleAdsAuthError, match=pattern) as caught,
    ):
        ads.create_user_list("seg-a", "opaque", 30)
    assert not caught.value.transient
    assert sandbox.call_count("MutateUserLists") == 1
    for secret in (ACCESS_TOKEN, DEVELOPER_TOKEN, *options.values()):
        if "token" in secret:
            assert secret not in str(caught.value)


@pytest.mark.parametrize(
    ("content", "pattern"),
    [(None, "cannot be read"), (b"not a certificate", "holds no PEM certificate")],
)
def test_unusable_ca_file(
    tmp_path: Path, sleeps: list[float], content: bytes | None, pattern: str
) -> None:
    ca_file = tmp_path / "ca.pem"
    if content is not None:
        ca_file.write_bytes(content)
    with pytest.raises(ConfigError, match=pattern):
        GoogleAdsCustomerMatchClient(
            "1234567890",
            DEVELOPER_TOKEN,
            ACCESS_TOKEN,
            endpoint="127.0.0.1:1",
            ca_file=str(ca_file),
        )


def test_replace_cannot_remove(client: GoogleAdsCustomerMatchClient, user_list: str) -> None:
    with pytest.raises(ValueError, match="cannot remove"):
        client.upload(user_list, [], remove=True, consent=None, replace=True)


# ---------------------------------------------------------------- logging


def test_no_identifiers_or_tokens_in_logs_even_at_debug(
    sandbox: GoogleAdsSandbox,
    sleeps: list[float],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # root logger at DEBUG
    logging.getLogger(SDK_LOGGER).setLevel(logging.DEBUG)  # someone turned the SDK up
    rows = people(0, 20)
    rows[3] = {"hashed_email": "bad-hash"}
    with make_client(sandbox, sleeps) as ads:
        assert logging.getLogger(SDK_LOGGER).level == logging.WARNING
        sandbox.inject("concurrent_modification", method=ADD)  # a failed request, too
        user_list = ads.create_user_list("seg-l", "opaque", 30)
        result = ads.upload(user_list, rows, remove=False, consent=GRANTED)
    assert result.retries == 1
    text = caplog.text
    assert "CONCURRENT_MODIFICATION" in text  # our retry line: the capture works
    assert "IsFault: True" in text  # the SDK's summary line at WARNING
    assert "Request\n-------" not in text  # never the SDK's full request dump
    for row in rows:
        for value in row.values():
            assert value not in text
    assert ACCESS_TOKEN not in text and DEVELOPER_TOKEN not in text


# ---------------------------------------------------------------- the SDK's own get_service path


def test_stock_get_service_path_with_the_roots_env_variable(sandbox: GoogleAdsSandbox) -> None:
    """Without ``ca_file`` the client uses ``GoogleAdsClient.get_service`` unchanged; gRPC
    then trusts ``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH``, read once per process — so this runs
    in a fresh interpreter."""
    script = textwrap.dedent(
        f"""
        import hashlib
        from connectors.google_ads.client import GoogleAdsCustomerMatchClient
        ads = GoogleAdsCustomerMatchClient(
            {sandbox.customer_id!r}, {DEVELOPER_TOKEN!r}, {ACCESS_TOKEN!r},
            endpoint={sandbox.endpoint!r}, poll_seconds=0.01,
        )
        user_list = ads.create_user_list("seg-env", "opaque", 30)
        rows = [{{"hashed_email": hashlib.sha256(str(i).encode()).hexdigest()}} for i in range(7)]
        result = ads.upload(user_list, rows, remove=False, consent=("GRANTED", "GRANTED"))
        print(user_list, result.accepted, result.status)
        """
    )
    env = {**os.environ, "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": sandbox.ca_file}
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[1],
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    user_list, accepted, status = done.stdout.split()
    assert (int(accepted), status) == (7, "SUCCESS")
    assert len(sandbox.members(user_list)) == 7


def test_job_result_is_frozen(client: GoogleAdsCustomerMatchClient, user_list: str) -> None:
    result = client.upload(user_list, people(0, 2), remove=False, consent=GRANTED)
    assert isinstance(result, JobResult)
    with pytest.raises(AttributeError):
        result.sent = 3  # type: ignore[misc]
