"""The Meta Graph API sandbox, driven through the real facebook-business SDK on 127.0.0.1."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from facebook_business.api import FacebookAdsApi
from facebook_business.exceptions import FacebookRequestError
from facebook_business.session import FacebookSession

from connectors.sandbox.meta_server import (
    DEMO_AD_ACCOUNT_ID,
    FAULTS,
    MAX_ROWS_PER_REQUEST,
    Fault,
    MetaSandbox,
    is_health_suggestive,
    main,
)

SCHEMA = ["EMAIL", "PHONE", "FN"]
ACCOUNT = f"act_{DEMO_AD_ACCOUNT_ID}"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def person(i: int) -> list[str]:
    return [sha(f"person{i}@example.com"), sha(f"1212555{i:04d}"), sha(f"name{i}")]


@pytest.fixture
def sandbox() -> Iterator[MetaSandbox]:
    with MetaSandbox() as running:
        yield running


def make_api(sandbox: MetaSandbox, token: str | None = None, app_secret: str | None = None):
    session = FacebookSession(access_token=token or sandbox.access_token, app_secret=app_secret)
    session.GRAPH = sandbox.url
    return FacebookAdsApi(session, api_version="v26.0")


@pytest.fixture
def api(sandbox: MetaSandbox) -> Iterator[FacebookAdsApi]:
    built = make_api(sandbox)
    yield built
    built._session.requests.close()


def create(api: FacebookAdsApi, name: str = "seg-7f3a", description: str = "cohort 12") -> str:
    answer = api.call(
        "POST",
        (ACCOUNT, "customaudiences"),
        params={
            "name": name,
            "subtype": "CUSTOM",
            "description": description,
            "customer_file_source": "USER_PROVIDED_ONLY",
        },
    ).json()
    return answer["id"]


def upload(
    api: FacebookAdsApi,
    audience_id: str,
    rows: list[list[str]],
    *,
    method: str = "POST",
    edge: str = "users",
    schema: list[str] = SCHEMA,
    session: dict[str, Any] | None = None,
) -> dict[str, Any]:
    params: dict[str, Any] = {"payload": {"schema": schema, "data": rows}}
    if session is not None:
        params["session"] = session
    return api.call(method, (audience_id, edge), params=params).json()


def session(seq: int, last: bool, sid: int = 77, total: int = 0) -> dict[str, Any]:
    return {
        "session_id": sid,
        "batch_seq": seq,
        "last_batch_flag": last,
        "estimated_num_total": total,
    }


def graph_error(call: Any) -> FacebookRequestError:
    with pytest.raises(FacebookRequestError) as caught:
        call()
    return caught.value


def test_create_and_read_audience(sandbox: MetaSandbox, api: FacebookAdsApi) -> None:
    audience_id = create(api)
    fields = "name,description,approximate_count_lower_bound,operation_status,delivery_status"
    answer = api.call("GET", (audience_id,), params={"fields": fields}).json()
    assert answer == {
        "id": audience_id,
        "name": "seg-7f3a",
        "description": "cohort 12",
        "approximate_count_lower_bound": 0,
        "operation_status": {"code": 200, "description": "Normal"},
        "delivery_status": {"code": 300, "description": "This audience is too small to use."},
    }
    assert sandbox.audience_ids() == [audience_id]


@pytest.mark.parametrize(
    ("params", "path", "subcode", "match"),
    [
        ({"subtype": "CUSTOM", "customer_file_source": "USER_PROVIDED_ONLY"}, ACCOUNT, None,
         "name is required"),
        ({"name": "a", "subtype": "LOOKALIKE", "customer_file_source": "USER_PROVIDED_ONLY"},
         ACCOUNT, None, "subtype must be CUSTOM"),
        ({"name": "a", "subtype": "CUSTOM"}, ACCOUNT, 1870101, "customer_file_source"),
        ({"name": "a", "subtype": "CUSTOM", "customer_file_source": "USER_PROVIDED_ONLY"},
         "act_999", 33, "act_999' does not exist"),
    ],
)  # fmt: skip
def test_create_rejects_bad_parameters(
    api: FacebookAdsApi, params: dict[str, str], path: str, subcode: int | None, match: str
) -> None:
    error = graph_error(lambda: api.call("POST", (path, "customaudiences"), params=params))
    assert error.api_error_code() == 100
    assert error.api_error_subcode() == subcode
    assert error.http_status() == 400
    assert match in error.api_error_message()


def test_add_counts_bad_hashes_and_keeps_the_rest(
    sandbox: MetaSandbox, api: FacebookAdsApi
) -> None:
    audience_id = create(api)
    good = [person(i) for i in range(5)]
    bad = [
        [sha("x").upper(), "", ""],  # upper-case hex
        [sha("y")[:63], "", ""],  # 63 characters
        ["someone@example.com", "", ""],  # not hashed at all
        ["", "", ""],  # no identifier
    ]
    partial = [sha("only-email"), "", ""]  # empty cells are allowed
    answer = upload(api, audience_id, [*good, *bad, partial])
    assert answer["num_received"] == 10
    assert answer["num_invalid_entries"] == 4
    assert len(answer["invalid_entry_samples"]) == 4
    assert "someone@example.com" not in json.dumps(answer)
    assert sandbox.members(audience_id) == {tuple(r) for r in [*good, partial]}
    assert sandbox.member_schema(audience_id) == tuple(SCHEMA)
    assert sandbox.member_key_values(audience_id, "PHONE") == {r[1] for r in good}


def test_extern_id_and_madid_are_not_hashed(sandbox: MetaSandbox, api: FacebookAdsApi) -> None:
    audience_id = create(api)
    rows = [["C000000001", "", sha("a@b.c")], ["C000000002", "6D92078A-8246", ""]]
    answer = upload(api, audience_id, rows, schema=["EXTERN_ID", "MADID", "EMAIL"])
    assert answer["num_invalid_entries"] == 0
    assert sandbox.member_key_values(audience_id, "EXTERN_ID") == {"C000000001", "C000000002"}


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({}, "payload is required"),
        ({"payload": "not json"}, "payload must be a JSON object"),
        ({"payload": {"schema": ["EMAIL", "SSN"], "data": [["", ""]]}}, "invalid key 'SSN'"),
        ({"payload": {"schema": ["EMAIL", "EMAIL"], "data": [["", ""]]}}, "repeats a key"),
        ({"payload": {"schema": SCHEMA, "data": []}}, "non-empty array"),
        ({"payload": {"schema": SCHEMA, "data": [person(1), person(2)[:2]]}},
         "entry 1 does not have 3 values"),
        ({"payload": {"schema": SCHEMA, "data": [[sha("a"), 5, ""]]}}, "non-string"),
        ({"payload": {"schema": SCHEMA, "data": [person(1)]}, "session": {"batch_seq": 1}},
         "session[session_id] must be a positive integer"),
        ({"payload": {"schema": SCHEMA, "data": [person(1)]},
          "session": {"session_id": 3, "batch_seq": 0, "last_batch_flag": True}},
         "session[batch_seq] must be an integer >= 1"),
    ],
)  # fmt: skip
def test_upload_rejects_malformed_requests(
    api: FacebookAdsApi, params: dict[str, Any], match: str
) -> None:
    audience_id = create(api)
    error = graph_error(lambda: api.call("POST", (audience_id, "users"), params=params))
    assert error.api_error_code() == 100
    assert match in error.api_error_message()


def test_more_than_ten_thousand_rows_is_error_100(api: FacebookAdsApi) -> None:
    audience_id = create(api)
    rows = [[sha("e"), "", ""]] * (MAX_ROWS_PER_REQUEST + 1)
    error = graph_error(lambda: upload(api, audience_id, rows))
    assert (error.api_error_code(), error.api_error_subcode()) == (100, 1870054)
    assert "10001 entries" in error.api_error_message()


def test_remove_goes_in_the_query_string_and_matches_whole_rows(
    sandbox: MetaSandbox, api: FacebookAdsApi
) -> None:
    audience_id = create(api)
    upload(api, audience_id, [person(i) for i in range(6)])
    other_name = [*person(0)[:2], sha("someone else")]
    answer = upload(api, audience_id, [person(1), person(2), other_name], method="DELETE")
    assert answer["num_received"] == 3
    assert sandbox.members(audience_id) == {tuple(person(i)) for i in (0, 3, 4, 5)}
    removal = [r for r in sandbox.request_log() if r.method == "DELETE"][-1]
    assert removal.request_bytes > 3 * 3 * 64  # the rows travelled in the request line


def test_replace_swaps_membership_at_the_last_batch(
    sandbox: MetaSandbox, api: FacebookAdsApi
) -> None:
    audience_id = create(api)
    upload(api, audience_id, [person(i) for i in range(4)])
    first = upload(
        api, audience_id, [person(10)], edge="usersreplace", session=session(1, False, total=2)
    )
    assert first["session_id"] == "77"
    assert sandbox.members(audience_id) == {tuple(person(i)) for i in range(4)}
    upload(api, audience_id, [person(11)], edge="usersreplace", session=session(2, True))
    assert sandbox.members(audience_id) == {tuple(person(10)), tuple(person(11))}


def test_replace_needs_a_session(api: FacebookAdsApi) -> None:
    audience_id = create(api)
    error = graph_error(lambda: upload(api, audience_id, [person(1)], edge="usersreplace"))
    assert "session is required" in error.api_error_message()


def test_a_repeated_batch_is_answered_again_and_an_ended_session_refuses_more(
    sandbox: MetaSandbox, api: FacebookAdsApi
) -> None:
    audience_id = create(api)
    first = upload(api, audience_id, [person(1)], session=session(1, True))
    again = upload(api, audience_id, [person(1)], session=session(1, True))
    assert again == first
    error = graph_error(lambda: upload(api, audience_id, [person(2)], session=session(2, True)))
    assert (error.api_error_code(), error.api_error_subcode()) == (100, 1870104)
    assert sandbox.members(audience_id) == {tuple(person(1))}


def test_removal_below_the_minimum_is_refused_when_enabled(
    sandbox: MetaSandbox, api: FacebookAdsApi
) -> None:
    audience_id = create(api)
    upload(api, audience_id, [person(i) for i in range(103)])
    upload(api, audience_id, [person(0), person(1)], method="DELETE")  # off by default
    sandbox.min_size_after_removal = 100
    upload(api, audience_id, [person(2)], method="DELETE")  # leaves exactly 100
    error = graph_error(lambda: upload(api, audience_id, [person(3)], method="DELETE"))
    assert error.api_error_code() == 2650
    assert "fewer than 100 people" in error.api_error_message()
    assert len(sandbox.members(audience_id)) == 100


@pytest.mark.parametrize(
    ("name", "description", "flagged"),
    [
        ("Diabetes outreach", "", True),
        ("seg-1", "women who are pregnant", True),
        ("CARDIOLOGY follow-up", "", True),
        ("seg-1", "HIV clinic", True),
        ("aud-0042", "q3 cohort", False),
        ("standard members", "maids and aides", False),
    ],
)
def test_health_suggestive_audiences_are_flagged_and_refuse_updates(
    api: FacebookAdsApi, name: str, description: str, flagged: bool
) -> None:
    assert is_health_suggestive(f"{name} {description}") is flagged
    audience_id = create(api, name, description)
    status = api.call("GET", (audience_id,), params={"fields": "operation_status"}).json()
    assert status["operation_status"]["code"] == (471 if flagged else 200)
    if flagged:
        error = graph_error(lambda: upload(api, audience_id, [person(1)]))
        assert (error.api_error_code(), error.api_error_subcode()) == (100, 1713230)
    else:
        assert upload(api, audience_id, [person(1)])["num_invalid_entries"] == 0


def test_wrong_token_is_error_190(sandbox: MetaSandbox) -> None:
    api = make_api(sandbox, token="not-the-token")
    error = graph_error(lambda: create(api))
    assert (error.http_status(), error.api_error_code(), error.api_error_type()) == (
        400,
        190,
        "OAuthException",
    )
    assert error.body()["error"]["fbtrace_id"]
    api._session.requests.close()


def test_expired_token_is_error_190_subcode_463(sandbox: MetaSandbox, api: FacebookAdsApi) -> None:
    create(api)
    sandbox.expire_token()
    error = graph_error(lambda: create(api))
    assert (error.api_error_code(), error.api_error_subcode()) == (190, 463)
    assert "Session has expired" in error.api_error_message()


def test_token_in_authorization_header_is_accepted(sandbox: MetaSandbox) -> None:
    with requests.Session() as http:
        answer = http.post(
            f"{sandbox.url}/v26.0/{ACCOUNT}/customaudiences",
            data={"name": "a", "subtype": "CUSTOM", "customer_file_source": "USER_PROVIDED_ONLY"},
            headers={"Authorization": f"OAuth {sandbox.access_token}"},
        )
    assert answer.status_code == 200
    assert set(answer.json()) == {"id"}


def test_appsecret_proof_is_checked_when_configured() -> None:
    with MetaSandbox(app_secret="app-secret-1", require_appsecret_proof=True) as sandbox:
        without = make_api(sandbox)
        error = graph_error(lambda: create(without))
        assert "require an appsecret_proof" in error.api_error_message()
        wrong = make_api(sandbox, app_secret="another-secret")
        error = graph_error(lambda: create(wrong))
        assert "Invalid appsecret_proof" in error.api_error_message()
        right = make_api(sandbox, app_secret="app-secret-1")
        assert create(right)
        expected = hmac.new(b"app-secret-1", sandbox.access_token.encode(), hashlib.sha256)
        assert right._session.appsecret_proof == expected.hexdigest()
        for api in (without, wrong, right):
            api._session.requests.close()


def test_long_request_line_gets_html_414_that_the_sdk_takes_as_success(
    sandbox: MetaSandbox, api: FacebookAdsApi
) -> None:
    audience_id = create(api)
    rows = [person(i) for i in range(100)]  # ~22 KB of query string
    response = api.call(
        "DELETE", (audience_id, "users"), params={"payload": {"schema": SCHEMA, "data": rows}}
    )
    assert response.status() == 414
    assert response.body().startswith("<html>")
    assert response.is_success()  # the SDK's trap: no exception for a non-JSON page
    assert sandbox.request_log()[-1].status == 414


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_each_fault_preset_answers_as_graph_does(
    sandbox: MetaSandbox, api: FacebookAdsApi, name: str
) -> None:
    fault = FAULTS[name]
    audience_id = create(api)
    sandbox.inject(
        Fault(**{**fault.__dict__, "delay_s": min(fault.delay_s, 0.05)}), path=r"/users$"
    )
    if fault.delays_only:
        assert upload(api, audience_id, [person(1)])["num_received"] == 1
        assert sandbox.request_log()[-1].duration_s >= 0.05
        return
    response_status = fault.http_status
    try:
        response = api.call(
            "POST",
            (audience_id, "users"),
            params={"payload": {"schema": SCHEMA, "data": [person(1)]}},
        )
    except FacebookRequestError as error:
        assert error.http_status() == response_status
        assert error.api_error_code() == fault.code
        assert error.api_error_subcode() == fault.subcode
        assert error.api_transient_error() is bool(fault.is_transient)
    else:  # an HTML page without "Service Unavailable" passes the SDK as a success
        assert fault.html is not None
        assert response.status() == response_status
    assert sandbox.members(audience_id) == set()
    assert upload(api, audience_id, [person(1)])["num_received"] == 1  # fault used up


def test_faults_match_method_and_path_and_count_down(
    sandbox: MetaSandbox, api: FacebookAdsApi
) -> None:
    audience_id = create(api)
    sandbox.inject("user_rate_limit", method="DELETE", path=r"/users$", times=2)
    assert upload(api, audience_id, [person(1)])["num_received"] == 1  # POST not matched
    assert sandbox.pending_faults() == 2
    for _ in range(2):
        error = graph_error(lambda: upload(api, audience_id, [person(1)], method="DELETE"))
        assert error.api_error_code() == 17
    assert sandbox.pending_faults() == 0
    upload(api, audience_id, [person(1)], method="DELETE")
    assert sandbox.members(audience_id) == set()


def test_unknown_fault_name_and_bad_times_are_refused(sandbox: MetaSandbox) -> None:
    with pytest.raises(KeyError, match="unknown fault 'rate'"):
        sandbox.inject("rate")
    with pytest.raises(ValueError, match="times must be at least 1"):
        sandbox.inject("slow", times=0)


def test_unknown_paths_and_objects_answer_error_100_subcode_33(api: FacebookAdsApi) -> None:
    for method, path in [("GET", ("999",)), ("POST", ("999", "users")), ("GET", ("a", "b"))]:
        error = graph_error(lambda m=method, p=path: api.call(m, p))
        assert (error.api_error_code(), error.api_error_subcode()) == (100, 33)


def test_unknown_field_is_error_100(api: FacebookAdsApi) -> None:
    audience_id = create(api)
    error = graph_error(lambda: api.call("GET", (audience_id,), params={"fields": "name,pii"}))
    assert "nonexisting field (pii)" in error.api_error_message()


def test_delete_audience(sandbox: MetaSandbox, api: FacebookAdsApi) -> None:
    audience_id = create(api)
    assert api.call("DELETE", (audience_id,)).json() == {"success": True}
    assert sandbox.audience_ids() == []


def test_request_log_never_holds_the_token_or_the_rows(
    sandbox: MetaSandbox, api: FacebookAdsApi
) -> None:
    audience_id = create(api)
    upload(api, audience_id, [person(1)], method="DELETE")
    log = sandbox.request_log()
    assert [(r.method, r.path, r.status) for r in log] == [
        ("POST", f"/v26.0/{ACCOUNT}/customaudiences", 200),
        ("DELETE", f"/v26.0/{audience_id}/users", 200),
    ]
    assert sandbox.access_token not in repr(log)
    assert person(1)[0] not in repr(log)
    assert 0 < sandbox.server_time_s() == pytest.approx(sum(r.duration_s for r in log))
    sandbox.reset_log()
    assert sandbox.request_log() == []


def test_sandbox_listens_only_on_loopback() -> None:
    for host in ("0.0.0.0", "::1", "example.com"):
        with pytest.raises(ValueError, match="only listens on an IPv4 loopback address"):
            MetaSandbox(host=host)
    with pytest.raises(RuntimeError, match="not started"):
        _ = MetaSandbox().url
    with pytest.raises(ValueError, match="only listens on an IPv4 loopback address"):
        main(["--host", "192.0.2.1", "--port", "0"])


# ---------------------------------------------------------------- Graph's method override
def test_a_post_with_method_delete_removes_as_graph_does(
    sandbox: MetaSandbox, api: FacebookAdsApi
) -> None:
    audience_id = create(api)
    upload(api, audience_id, [person(1), person(2), person(3)])
    sandbox.reset_log()
    params = {"payload": {"schema": SCHEMA, "data": [person(1), person(2)]}, "method": "delete"}
    answer = api.call("POST", (audience_id, "users"), params=params).json()  # the real SDK
    assert answer["num_received"] == 2
    assert sandbox.members(audience_id) == {tuple(person(3))}
    (record,) = sandbox.request_log()
    assert (record.http_method, record.method, record.status) == ("POST", "DELETE", 200)
    params["method"] = "PATCH"
    error = graph_error(lambda: api.call("POST", (audience_id, "users"), params=params))
    assert error.api_error_code() == 100 and "method override" in error.api_error_message()


# ---------------------------------------------------------------- upload sessions in order
@pytest.mark.parametrize(("first", "then"), [(2, None), (1, 3)], ids=["starts-at-2", "gap"])
def test_a_session_must_number_its_batches_from_one_without_gaps(
    sandbox: MetaSandbox, api: FacebookAdsApi, first: int, then: int | None
) -> None:
    audience_id = create(api)
    if then is None:
        error = graph_error(
            lambda: upload(api, audience_id, [person(1)], session=session(first, False))
        )
    else:
        upload(api, audience_id, [person(1)], session=session(first, False))
        error = graph_error(
            lambda: upload(api, audience_id, [person(2)], session=session(then, True))
        )
    assert error.api_error_code() == 100
    assert "batch_seq" in error.api_error_message()
    expected = set() if then is None else {tuple(person(1))}
    assert sandbox.members(audience_id) == expected
    # the session goes on in order; a repeated batch is answered again and changes nothing
    upload(api, audience_id, [person(1)], session=session(1, False))
    upload(api, audience_id, [person(1)], session=session(1, False))
    upload(api, audience_id, [person(2)], session=session(2, True))
    assert sandbox.members(audience_id) == {tuple(person(1)), tuple(person(2))}


def test_fault_injection_flags_an_audience_after_an_upload(
    sandbox: MetaSandbox, api: FacebookAdsApi
) -> None:
    audience_id = create(api)
    sandbox.flag_after_upload()
    upload(api, audience_id, [person(1)])  # accepted, then the classifier flags it
    status = api.call("GET", (audience_id,), params={"fields": "operation_status"}).json()
    assert status["operation_status"]["code"] == 471
    error = graph_error(lambda: upload(api, audience_id, [person(2)]))
    assert error.api_error_subcode() == 1713230
    other = create(api, "seg-0b1d")
    sandbox.flag_audience(other)
    assert sandbox.audience_info(other)["operation_status"]["code"] == 471
