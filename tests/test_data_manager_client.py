"""The real google-ads-datamanager client against the project's Data Manager sandbox."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import pytest

from audiences.core.errors import ConfigError
from connectors.google_data_manager.client import DataManagerClient
from connectors.google_data_manager.errors import (
    DataManagerAuthError,
    DataManagerRequestFailed,
    DataManagerRequestInvalid,
)
from connectors.sandbox.data_manager_server import DataManagerSandbox

TOKEN = "test-dm-token"


def h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def person(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "hashed_email": h(f"p{i}@example.com"),
        "hashed_phone_number": h(f"+1555{i:07d}"),
        "hashed_first_name": h(f"first{i}"),
        "hashed_last_name": h(f"last{i}"),
        "country_code": "us",
        "postal_code": f"{i % 90000 + 10000}",
        **extra,
    }


def stored(i: int) -> frozenset[tuple[str, str]]:
    p = person(i)
    address = f"{p['hashed_first_name']}:{p['hashed_last_name']}:US:{p['postal_code']}"
    return frozenset(
        {("email", p["hashed_email"]), ("phone", p["hashed_phone_number"]), ("address", address)}
    )


@pytest.fixture(scope="module")
def sandbox() -> Iterator[DataManagerSandbox]:
    with DataManagerSandbox(access_token=TOKEN, processing_polls=1) as box:
        yield box


@pytest.fixture
def client(sandbox: DataManagerSandbox) -> Iterator[DataManagerClient]:
    sandbox.clear_faults()
    with DataManagerClient(
        sandbox.customer_id,
        TOKEN,
        endpoint=sandbox.endpoint,
        ca_file=sandbox.ca_file,
        poll_seconds=0.001,
        backoff_seconds=0.001,
        sleep=lambda _s: None,
    ) as c:
        yield c
    assert sandbox.pending_faults() == 0


@pytest.fixture
def user_list(client: DataManagerClient, request: pytest.FixtureRequest) -> str:
    return client.create_user_list(f"aud_{request.node.name[:40]}", "test", 30)


def test_user_list_is_found_by_its_opaque_name(client: DataManagerClient) -> None:
    name = client.create_user_list("aud_findme", "d", 540)
    assert client.find_user_list("aud_findme") == name
    assert client.find_user_list("aud_absent") is None
    assert client.get_user_list(name).membership_duration.days == 540


def test_ingest_and_remove_round_trip(
    sandbox: DataManagerSandbox, client: DataManagerClient, user_list: str
) -> None:
    members = [
        person(i, ad_user_data="GRANTED", ad_personalization="GRANTED") for i in range(25_000)
    ]
    added = client.upload(user_list, members, terms_accepted=True)
    assert (added.sent, added.accepted, added.rejected, len(added.requests)) == (
        25_000,
        25_000,
        0,
        3,
    )
    assert added.match_rate_range == "MATCH_RATE_RANGE_61_TO_70"
    assert sandbox.members(user_list) == {stored(i) for i in range(25_000)}
    removed = client.upload(user_list, [person(i) for i in range(100)], remove=True)
    assert removed.accepted == 100
    assert sandbox.members(user_list) == {stored(i) for i in range(100, 25_000)}


def test_consent_goes_per_member(
    sandbox: DataManagerSandbox, client: DataManagerClient, user_list: str
) -> None:
    from google.ads.datamanager_v1 import types

    from connectors.google_data_manager.client import _add_member

    raw = types.IngestAudienceMembersRequest.pb()()
    _add_member(
        raw.audience_members.add(),
        person(1, ad_user_data="GRANTED", ad_personalization="GRANTED"),
        0,
        adding=True,
    )
    _add_member(raw.audience_members.add(), person(2), 1, adding=True)
    granted, unspecified = raw.audience_members
    assert (granted.consent.ad_user_data, granted.consent.ad_personalization) == (1, 1)
    assert not unspecified.HasField("consent")  # the request's default applies
    assert len(granted.user_data.user_identifiers) == 3  # email, phone, address: one member
    with pytest.raises(DataManagerRequestInvalid, match="consent DENIED"):
        client.upload(user_list, [person(3, ad_user_data="DENIED")], terms_accepted=True)
    assert sandbox.requests_for(user_list) == []  # nothing was sent


def test_the_sandbox_refuses_denied_members_as_the_api_does(
    sandbox: DataManagerSandbox, client: DataManagerClient, user_list: str
) -> None:
    from google.ads.datamanager_v1 import types

    request = types.IngestAudienceMembersRequest(
        destinations=[client._destination(user_list)],
        audience_members=[
            types.AudienceMember(
                user_data=types.UserData(
                    user_identifiers=[types.UserIdentifier(email_address=h(f"d{i}"))]
                ),
                consent=types.Consent(ad_user_data=2 if i < 2 else 1, ad_personalization=1),
            )
            for i in range(5)
        ],
        encoding=types.Encoding.HEX,
        terms_of_service=types.TermsOfService(customer_match_terms_of_service_status=1),
    )
    request_id = client.ingestion.ingest_audience_members(request=request).request_id
    (outcome,), _ = client.wait([request_id])
    assert (outcome.status, outcome.errors) == ("PARTIAL_SUCCESS", {"DENIED_CONSENT": 2})
    assert len(sandbox.members(user_list)) == 3


@pytest.mark.parametrize(
    ("default", "own", "refused"),
    [
        ((0, 0), {}, 2),  # UNSPECIFIED: the EEA members are refused
        ((1, 1), {}, 0),  # request-level GRANTED applies to them
        ((0, 0), {"ad_user_data": "GRANTED", "ad_personalization": "GRANTED"}, 0),
        ((1, 0), {}, 2),  # one signal is not enough
    ],
)
def test_sandbox_eea_consent(  # the sandbox refuses EEA people without both GRANTED
    sandbox: DataManagerSandbox,
    client: DataManagerClient,
    user_list: str,
    default: tuple[int, int],
    own: dict[str, str],
    refused: int,
) -> None:
    from google.ads.datamanager_v1 import types

    from connectors.google_data_manager.client import _add_member

    raw = types.IngestAudienceMembersRequest.pb()()
    raw.destinations.append(type(client._destination(user_list)).pb(client._destination(user_list)))
    raw.encoding = types.Encoding.HEX
    raw.terms_of_service.customer_match_terms_of_service_status = 1
    raw.consent.ad_user_data, raw.consent.ad_personalization = default
    for i, country in enumerate(["DE", "US", "ie", "US"]):  # two in the EEA
        _add_member(
            raw.audience_members.add(), person(i, country_code=country, **own), i, adding=True
        )
    request = types.IngestAudienceMembersRequest.wrap(raw)
    request_id = client.ingestion.ingest_audience_members(request=request).request_id
    (outcome,), _ = client.wait([request_id])
    assert outcome.errors == ({"UNKNOWN_CONSENT": refused} if refused else {})
    assert len(sandbox.members(user_list)) == 4 - refused


def test_partial_success_is_counted_as_rejected(
    sandbox: DataManagerSandbox, client: DataManagerClient, user_list: str
) -> None:
    sandbox.inject("partial", count=4)
    result = client.upload(user_list, [person(i) for i in range(50)], terms_accepted=True)
    assert (result.accepted, result.rejected, result.errors) == (46, 4, {"INVALID_FORMAT": 4})
    assert result.requests[0].status == "PARTIAL_SUCCESS"
    assert len(sandbox.members(user_list)) == 46


def test_a_request_processing_for_a_while_is_polled_with_backoff(
    sandbox: DataManagerSandbox, user_list: str
) -> None:
    pauses: list[float] = []
    with DataManagerClient(
        sandbox.customer_id,
        TOKEN,
        endpoint=sandbox.endpoint,
        ca_file=sandbox.ca_file,
        poll_seconds=1.0,
        max_poll_seconds=8.0,
        sleep=pauses.append,
    ) as c:
        sandbox.inject("processing", polls=4)
        result = c.upload(user_list, [person(i) for i in range(10)], terms_accepted=True)
    assert result.polls == 6 and len(pauses) == 5
    assert pauses == sorted(pauses) or max(pauses) <= 8.0
    assert all(0.8 <= p <= 8.0 for p in pauses)


def test_a_failed_request_raises_and_a_stuck_one_times_out(
    sandbox: DataManagerSandbox, client: DataManagerClient, user_list: str
) -> None:
    sandbox.inject("failed")
    with pytest.raises(DataManagerRequestFailed, match="ended FAILED"):
        client.upload(user_list, [person(1)], terms_accepted=True)
    assert sandbox.members(user_list) == frozenset()
    with DataManagerClient(
        sandbox.customer_id,
        TOKEN,
        endpoint=sandbox.endpoint,
        ca_file=sandbox.ca_file,
        poll_seconds=1.0,
        poll_timeout_seconds=3.0,
        sleep=lambda _s: None,
    ) as slow:
        sandbox.inject("processing", polls=100)
        with pytest.raises(DataManagerRequestFailed, match="still PROCESSING") as caught:
            slow.upload(user_list, [person(2)], terms_accepted=True)
    assert caught.value.transient


@pytest.mark.parametrize("fault", ["resource_exhausted", "unavailable"])
def test_transient_faults_are_retried(
    sandbox: DataManagerSandbox, client: DataManagerClient, user_list: str, fault: Any
) -> None:
    sandbox.inject(fault, method="IngestAudienceMembers", times=2)
    result = client.upload(user_list, [person(1)], terms_accepted=True)
    assert (result.accepted, result.retries) == (1, 2)


def test_permission_denied_names_the_fix(
    sandbox: DataManagerSandbox, client: DataManagerClient, user_list: str
) -> None:
    sandbox.inject("permission_denied")
    with pytest.raises(DataManagerAuthError) as caught:
        client.upload(user_list, [person(1)], terms_accepted=True)
    assert "login_customer_id" in str(caught.value) and "\n" not in str(caught.value)


def test_bad_input_is_one_line_naming_the_setting(
    sandbox: DataManagerSandbox, client: DataManagerClient, user_list: str
) -> None:
    cases: list[tuple[Any, str]] = [
        (
            lambda: client.upload(user_list, [person(1, country_code="USA")], terms_accepted=True),
            r"region code 'USA' is not ISO 3166-1 alpha-2.*\[identity\] country",
        ),
        (
            lambda: client.upload(
                client.user_list_name("424242"), [person(1)], terms_accepted=True
            ),
            "user list does not exist.*user_list_id",
        ),
        (lambda: client.upload(user_list, [person(1)]), "accept_customer_match_terms = true"),
    ]
    for call, pattern in cases:
        with pytest.raises((DataManagerRequestInvalid, ConfigError), match=pattern) as caught:
            call()
        assert "\n" not in str(caught.value)
    expired = DataManagerClient(
        sandbox.customer_id,
        "expired",
        endpoint=sandbox.endpoint,
        ca_file=sandbox.ca_file,
        access_token_env="MY_DM_TOKEN",
    )
    with pytest.raises(DataManagerAuthError, match="MY_DM_TOKEN") as caught:
        expired.find_user_list("x")
    assert "expired" not in str(caught.value)
    expired.close()


def test_the_sandbox_refuses_a_bad_region_code_as_a_whole_request(
    client: DataManagerClient, user_list: str
) -> None:
    from google.ads.datamanager_v1 import types

    from connectors.google_data_manager.errors import translate

    member = types.AudienceMember(
        user_data=types.UserData(
            user_identifiers=[
                types.UserIdentifier(
                    address=types.AddressInfo(
                        given_name=h("a"), family_name=h("b"), region_code="XX", postal_code="1"
                    )
                )
            ]
        )
    )
    request = types.IngestAudienceMembersRequest(
        destinations=[client._destination(user_list)],
        audience_members=[member],
        encoding=types.Encoding.HEX,
        terms_of_service=types.TermsOfService(customer_match_terms_of_service_status=1),
    )
    from google.api_core.exceptions import InvalidArgument

    with pytest.raises(InvalidArgument) as caught:
        client.ingestion.ingest_audience_members(request=request)
    error = translate(caught.value, action="ingest", destination="google", access_token_env="T")
    assert "audience_members[0].user_data.user_identifiers[0].address.region_code" in str(error)
    assert "[identity] country" in str(error)
