"""MetaClient driving the real facebook-business SDK against the sandbox on 127.0.0.1."""

from __future__ import annotations

import hashlib
import hmac
import logging
import random
import socket
import sys
import traceback
from collections.abc import Iterator
from urllib.parse import quote_plus

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audiences.core.errors import ConfigError, ConnectorError, InternalError
from connectors.meta import (
    MetaAudienceFlagged,
    MetaAudienceUpdateFailed,
    MetaAuthError,
    MetaClient,
    MetaError,
    MetaInvalidRequest,
    MetaPermissionError,
    MetaRateLimited,
    MetaRequestTooLong,
    MetaTransientError,
    MetaUnexpectedResponse,
    RedactSecretsFilter,
    RetryPolicy,
    new_session_id,
    redact,
    upload_session,
)
from connectors.sandbox.meta_server import DEMO_AD_ACCOUNT_ID, FAULTS, Fault, MetaSandbox

TOKEN = "fake.meta.token.7f3a9c1d"
APP_SECRET = "app-secret-5b2e"
PROOF = hmac.new(APP_SECRET.encode(), TOKEN.encode(), hashlib.sha256).hexdigest()
SCHEMA = ["EMAIL", "PHONE", "FN", "LN", "ZIP", "COUNTRY"]


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def rows_for(start: int, stop: int) -> list[list[str]]:
    return [
        [sha(f"p{i}@example.com"), sha(f"1212{i:07d}"), sha(f"fn{i}"), sha("doe"), sha("10001"),
         sha("us")]
        for i in range(start, stop)
    ]  # fmt: skip


@pytest.fixture
def sandbox() -> Iterator[MetaSandbox]:
    with MetaSandbox(access_token=TOKEN, app_secret=APP_SECRET) as running:
        yield running


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def make_client(sandbox: MetaSandbox, sleeps: Sleeps, **options: object) -> MetaClient:
    settings: dict[str, object] = {
        "endpoint": sandbox.url,
        "app_secret": APP_SECRET,
        "retry": RetryPolicy(max_attempts=4, base_delay_s=0.001, max_delay_s=0.01),
        "sleep": sleeps,
        "rng": random.Random(7),
        **options,
    }
    return MetaClient(TOKEN, f"act_{DEMO_AD_ACCOUNT_ID}", **settings)  # type: ignore[arg-type]


@pytest.fixture
def client(sandbox: MetaSandbox, sleeps: Sleeps) -> Iterator[MetaClient]:
    with make_client(sandbox, sleeps) as built:
        yield built


@pytest.fixture
def audience(client: MetaClient) -> str:
    return client.create_audience("seg-7f3a", "cohort 12")


def test_create_and_read_audience(client: MetaClient, sandbox: MetaSandbox) -> None:
    before = sys.excepthook
    audience_id = client.create_audience("seg-7f3a", "cohort 12")
    assert sandbox.audience_ids() == [audience_id]
    info = client.get_audience(audience_id)
    assert info["name"] == "seg-7f3a"
    assert info["description"] == "cohort 12"
    assert info["approximate_count_lower_bound"] == 0
    assert info["operation_status"]["code"] == 200
    # built without FacebookAdsApi.init(): no crash-log excepthook posting tracebacks to Meta
    from facebook_business.crashreporter import CrashReporter

    assert sys.excepthook is before
    assert CrashReporter.reporter_instance is None


def test_add_25000_rows_in_three_batches_of_one_session(
    client: MetaClient, sandbox: MetaSandbox, audience: str
) -> None:
    everyone = rows_for(0, 25_000)
    session_id = new_session_id()
    results = []
    for seq, start in enumerate(range(0, 25_000, 10_000), start=1):
        batch = everyone[start : start + 10_000]
        last = start + 10_000 >= 25_000
        session = upload_session(session_id, seq, last=last, estimated_total=25_000)
        results.append(client.add(audience, SCHEMA, batch, session))
    assert [r.num_received for r in results] == [10_000, 10_000, 5_000]
    assert {r.session_id for r in results} == {session_id}
    assert sum(r.num_invalid_entries for r in results) == 0
    assert sandbox.members(audience) == {tuple(r) for r in everyone}
    assert client.get_audience(audience)["approximate_count_lower_bound"] == 25_000
    assert len(sandbox.request_log()) == 1 + 3 + 1


def test_remove_posts_method_delete_with_the_payload_in_the_body(
    client: MetaClient, sandbox: MetaSandbox, audience: str
) -> None:
    everyone = rows_for(0, 300)
    client.add(audience, SCHEMA, everyone)
    sandbox.reset_log()
    result = client.remove(audience, SCHEMA, everyone[:250])
    assert (result.num_received, result.num_invalid_entries, result.requests) == (250, 0, 1)
    assert sandbox.members(audience) == {tuple(r) for r in everyone[250:]}
    (record,) = sandbox.request_log()
    # Graph's method override: a POST run as DELETE, the 250 rows in its body
    assert (record.http_method, record.method, record.status) == ("POST", "DELETE", 200)
    assert record.request_bytes > 250 * 6 * 64


def test_ten_thousand_removals_take_one_request_and_more_go_in_one_session(
    client: MetaClient, sandbox: MetaSandbox, audience: str
) -> None:
    everyone = rows_for(0, 10_001)
    client.add(audience, SCHEMA, everyone[:10_000])
    client.add(audience, SCHEMA, everyone[10_000:])
    sandbox.reset_log()
    assert client.remove(audience, SCHEMA, everyone[:10_000]).requests == 1
    client.add(audience, SCHEMA, everyone[:10_000])
    sandbox.reset_log()
    result = client.remove(audience, SCHEMA, everyone)
    assert (result.requests, result.num_received) == (2, 10_001)
    assert sandbox.members(audience) == set()
    sessions = sandbox._audiences[audience].sessions  # one remove session, batches 1 and 2
    (key,) = [k for k in sessions if k == f"remove:{result.session_id}"]
    assert sorted(sessions[key].responses) == [1, 2] and sessions[key].finished


def test_the_token_is_in_no_url(
    sandbox: MetaSandbox, sleeps: Sleeps, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # urllib3 logs every request line
    with make_client(sandbox, sleeps) as client:
        audience = client.create_audience("seg-1")
        client.add(audience, SCHEMA, rows_for(0, 5))
        client.remove(audience, SCHEMA, rows_for(0, 2))
        client.get_audience(audience)
        client.delete_audience(audience)
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("urllib3")]
    requests = [line for line in lines if " HTTP/1.1" in line]
    assert len(requests) == 5
    assert not any("access_token" in line or TOKEN in line for line in requests)
    assert not any("payload" in line for line in requests)


def test_replace_swaps_membership_at_the_last_batch(
    client: MetaClient, sandbox: MetaSandbox, audience: str
) -> None:
    client.add(audience, SCHEMA, rows_for(0, 50))
    session_id = new_session_id()
    client.replace(
        audience, SCHEMA, rows_for(40, 70), upload_session(session_id, 1, last=False,
                                                           estimated_total=60)
    )  # fmt: skip
    assert sandbox.members(audience) == {tuple(r) for r in rows_for(0, 50)}
    result = client.replace(
        audience, SCHEMA, rows_for(70, 100), upload_session(session_id, 2, last=True,
                                                            estimated_total=60)
    )  # fmt: skip
    assert result.num_received == 30
    assert sandbox.members(audience) == {tuple(r) for r in rows_for(40, 100)}


def test_one_bad_hash_is_rejected_and_the_rest_accepted(
    client: MetaClient, sandbox: MetaSandbox, audience: str
) -> None:
    rows = rows_for(0, 20)
    rows[7] = [rows[7][0][:-1] + "Z", *rows[7][1:]]
    result = client.add(audience, SCHEMA, rows)
    assert (result.num_received, result.num_invalid_entries) == (20, 1)
    assert list(result.invalid_entry_samples.values()) == ["Invalid EMAIL hash"]
    assert "invalid_entry_samples" not in repr(result)
    assert sandbox.members(audience) == {tuple(r) for i, r in enumerate(rows) if i != 7}


RETRYABLE = [
    ("app_rate_limit", MetaRateLimited),
    ("user_rate_limit", MetaRateLimited),
    ("ad_account_rate_limit", MetaRateLimited),
    ("ads_management_rate_limit", MetaRateLimited),
    ("server_error", MetaTransientError),
    ("service_unavailable_html", MetaTransientError),
    ("bad_gateway_html", MetaTransientError),
]


@pytest.mark.parametrize("fault", [name for name, _ in RETRYABLE])
def test_transient_errors_are_retried_then_succeed(
    client: MetaClient, sandbox: MetaSandbox, sleeps: Sleeps, audience: str, fault: str
) -> None:
    sandbox.inject(fault, path=r"/users$", times=2)
    result = client.add(audience, SCHEMA, rows_for(0, 5))
    assert result.num_received == 5
    assert 0.0005 <= sleeps[0] <= 0.001 <= sleeps[1] <= 0.002  # exponential, with jitter
    assert len(sleeps) == 2
    failed = FAULTS[fault].http_status
    assert [r.status for r in sandbox.request_log()[1:]] == [failed, failed, 200]
    assert sandbox.members(audience) == {tuple(r) for r in rows_for(0, 5)}


@pytest.mark.parametrize(("fault", "error_class"), RETRYABLE)
def test_transient_errors_give_up_after_max_attempts(
    client: MetaClient,
    sandbox: MetaSandbox,
    sleeps: Sleeps,
    audience: str,
    fault: str,
    error_class: type[MetaError],
) -> None:
    sandbox.inject(fault, path=r"/users$", times=10)
    with pytest.raises(error_class) as caught:
        client.add(audience, SCHEMA, rows_for(0, 5))
    assert caught.value.transient is True
    assert len(sandbox.request_log()) == 1 + 4
    assert len(sleeps) == 3
    assert caught.value.message.startswith("meta: ")


def test_meta_estimate_of_regained_access_drives_the_wait(
    client: MetaClient, sandbox: MetaSandbox, sleeps: Sleeps, audience: str
) -> None:
    long_wait = Fault(code=80004, subcode=2446079, message="(#80004) too many calls",
                      regain_access_minutes=5)  # fmt: skip
    sandbox.inject(long_wait, path=r"/users$")
    with pytest.raises(MetaRateLimited, match="error 80004/2446079") as caught:
        client.add(audience, SCHEMA, rows_for(0, 5))
    assert caught.value.retry_after_s == 300
    assert sleeps == []  # 300 s is over the policy's max delay: stop now, resume later
    assert len(sandbox.request_log()) == 2

    with make_client(sandbox, sleeps, retry=RetryPolicy(base_delay_s=0.001, max_delay_s=600)) as c:
        sandbox.inject(long_wait, path=r"/users$")
        assert c.add(audience, SCHEMA, rows_for(0, 5)).num_received == 5
    assert sleeps == [300]


def test_a_timeout_is_retried(sandbox: MetaSandbox, sleeps: Sleeps) -> None:
    with make_client(sandbox, sleeps, timeout=0.2) as client:
        audience = client.create_audience("seg-1")
        sandbox.inject(Fault(delay_s=0.4), path=r"/users$")
        session = upload_session(5, 1, last=True, estimated_total=3)
        result = client.add(audience, SCHEMA, rows_for(0, 3), session)
    assert result.num_received == 3
    assert len(sleeps) == 1
    assert sandbox.members(audience) == {tuple(r) for r in rows_for(0, 3)}


@pytest.mark.parametrize(
    ("fault", "error_class", "match"),
    [
        ("token_expired", MetaAuthError,
         "error 190/463.*put it in the environment variable META_ACCESS_TOKEN"),
        ("permission_denied", MetaPermissionError, "missing permission \\(error 200"),
        ("audience_update_failed", MetaAudienceUpdateFailed,
         "error 2650.*below about 100 people"),
        (Fault(code=100, message="(#100) Invalid parameter"), MetaInvalidRequest,
         "error 100: \\(#100\\) Invalid parameter"),
        (Fault(code=100, subcode=1713230, message="flagged"), MetaAudienceFlagged,
         "compliance must review"),
        (Fault(http_status=200, html="<html>captive portal</html>"), MetaUnexpectedResponse,
         "HTTP 200 with a non-JSON page"),
        (Fault(http_status=404, html="<html>Not Found</html>"), MetaUnexpectedResponse,
         "HTTP 404 with a non-JSON page"),
    ],
)  # fmt: skip
def test_terminal_errors_stop_without_retry(
    client: MetaClient,
    sandbox: MetaSandbox,
    sleeps: Sleeps,
    audience: str,
    fault: str | Fault,
    error_class: type[MetaError],
    match: str,
) -> None:
    sandbox.inject(fault, path=r"/users$")
    with pytest.raises(error_class, match=match) as caught:
        client.add(audience, SCHEMA, rows_for(0, 5))
    assert caught.value.transient is False
    assert isinstance(caught.value, ConnectorError)
    assert sleeps == []
    assert len(sandbox.request_log()) == 2
    assert sandbox.members(audience) == set()


def test_wrong_token_names_the_variable_not_the_token(sandbox: MetaSandbox, sleeps: Sleeps) -> None:
    with (
        MetaClient(
            "fake.wrong.token.99", DEMO_AD_ACCOUNT_ID, endpoint=sandbox.url,
            token_env_var="CLINIC_META_TOKEN", sleep=sleeps,
        ) as client,
        pytest.raises(MetaAuthError, match="environment variable CLINIC_META_TOKEN") as caught,
    ):  # fmt: skip
        client.create_audience("seg-1")
    assert "fake.wrong.token.99" not in str(caught.value)
    assert caught.value.code == 190


def test_request_too_long_is_caught(sandbox: MetaSandbox, sleeps: Sleeps) -> None:
    with make_client(sandbox, sleeps) as client:
        audience = client.create_audience("seg-1")
        sandbox.max_request_line_bytes = 60  # a proxy in between with a short line limit
        with pytest.raises(MetaRequestTooLong, match="request too long \\(HTTP 414\\)"):
            client.get_audience(audience)
    assert sleeps == []
    assert [r.status for r in sandbox.request_log()] == [200, 414]


def test_flagged_audience_raises_meta_audience_flagged(
    client: MetaClient, sandbox: MetaSandbox, sleeps: Sleeps
) -> None:
    audience = client.create_audience("Diabetes outreach Q3")
    assert client.get_audience(audience)["operation_status"]["code"] == 471
    with pytest.raises(MetaAudienceFlagged, match="flagged as suggesting a health condition"):
        client.add(audience, SCHEMA, rows_for(0, 5))
    assert sleeps == []
    assert sandbox.members(audience) == set()


def test_removal_refused_below_minimum_is_terminal(
    client: MetaClient, sandbox: MetaSandbox, audience: str, sleeps: Sleeps
) -> None:
    client.add(audience, SCHEMA, rows_for(0, 101))
    sandbox.min_size_after_removal = 100
    with pytest.raises(MetaAudienceUpdateFailed, match="fewer than 100 people"):
        client.remove(audience, SCHEMA, rows_for(0, 2))
    assert sleeps == []
    assert len(sandbox.members(audience)) == 101


@pytest.mark.parametrize(
    ("schema", "rows", "match"),
    [
        (["EMAIL", "SSN"], [["", ""]], "unknown keys: \\['SSN'\\]"),
        (["EMAIL", "EMAIL"], [["", ""]], "bad Meta schema"),
        ([], [[]], "bad Meta schema"),
        (["EMAIL"], [], "1 to 10000 rows, got 0"),
        (["EMAIL"], [[sha("a")]] * 10_001, "1 to 10000 rows, got 10001"),
    ],
)
def test_malformed_uploads_are_refused_before_sending(
    client: MetaClient,
    sandbox: MetaSandbox,
    audience: str,
    schema: list[str],
    rows: list[list[str]],
    match: str,
) -> None:
    with pytest.raises(InternalError, match=match):
        client.add(audience, schema, rows)
    assert len(sandbox.request_log()) == 1  # only the create


@pytest.mark.parametrize(
    ("account", "endpoint", "match"),
    [
        ("act_12ab", None, "is not a number"),
        ("123", "http://graph.example.com", "plain http on a non-loopback host"),
        ("123", "ftp://127.0.0.1", "not an http\\(s\\) URL"),
        ("123", "http://127.0.0.1:9/v26.0", "has a path or query"),
    ],
)
def test_bad_settings_are_config_errors(account: str, endpoint: str | None, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        MetaClient(TOKEN, account, endpoint=endpoint)


def test_empty_token_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="put the token in the environment variable META_"):
        MetaClient("", "123")


def test_retry_policy_backs_off_exponentially_with_jitter() -> None:
    policy = RetryPolicy(base_delay_s=1.0, max_delay_s=5.0, jitter=0.5)
    rng = random.Random(1)
    delays = [policy.delay_s(n, rng) for n in range(1, 6)]
    for n, delay in enumerate(delays, start=1):
        cap = min(5.0, 2 ** (n - 1))
        assert cap / 2 <= delay <= cap
    assert RetryPolicy(jitter=0).delay_s(3, rng) == 8.0
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)


# -- secrets never leak -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"GET /v26.0/act_1?access_token={TOKEN}&fields=id",
         "GET /v26.0/act_1?access_token=[REDACTED]&fields=id"),
        (f"url: /x?access_token={quote_plus('tok en/+=?')}&appsecret_proof={PROOF} (Caused",
         "url: /x?access_token=[REDACTED]&appsecret_proof=[REDACTED] (Caused"),
        ("{'access_token': 'abc.def-ghi'}", "{'access_token': '[REDACTED]'}"),
        ('{"access_token":"abc"}', '{"access_token":"[REDACTED]"}'),
        ("Authorization: Bearer abc.DEF_123", "Authorization: Bearer [REDACTED]"),
        (f"?payload=%7B%22data%22%3A%5B%5B%22{sha('a')}%22", "?payload=[REDACTED]"),
        (f"hash {sha('x')} seen", "hash [REDACTED] seen"),
        (f"token {TOKEN} in prose", "token [REDACTED] in prose"),
        ("nothing secret here: 190", "nothing secret here: 190"),
    ],
)  # fmt: skip
def test_redact(sandbox: MetaSandbox, text: str, expected: str) -> None:
    MetaClient(TOKEN, "1", endpoint=sandbox.url).close()  # registers TOKEN as a secret
    assert redact(text) == expected


def test_log_filter_redacts_message_arguments_and_traceback() -> None:
    logger = logging.getLogger("tests.meta.redaction")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    logger.addFilter(RedactSecretsFilter())
    try:
        try:
            raise OSError(f"connect failed for /x?access_token={TOKEN}")
        except OSError:
            logger.exception("call %s failed", f"/x?appsecret_proof={PROOF}")
    finally:
        logger.removeHandler(handler)
    formatted = logging.Formatter().format(records[0])
    assert "[REDACTED]" in formatted
    assert "OSError: connect failed for /x?access_token=[REDACTED]" in formatted
    assert TOKEN not in formatted
    assert PROOF not in formatted


def test_no_secret_in_any_log_record_or_error(
    sandbox: MetaSandbox, sleeps: Sleeps, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # root, so urllib3, requests and the SDK log everything
    errors: list[BaseException] = []
    with make_client(sandbox, sleeps) as client:
        audience = client.create_audience("seg-1")
        sandbox.inject("user_rate_limit", path=r"/users$")
        client.add(audience, SCHEMA, rows_for(0, 20))
        client.remove(audience, SCHEMA, rows_for(0, 20))
        sandbox.inject("server_error", method="GET", times=10)
        with pytest.raises(MetaTransientError) as transient:
            client.get_audience(audience)
        errors.append(transient.value)
        sandbox.expire_token()
        with pytest.raises(MetaAuthError) as terminal:
            client.add(audience, SCHEMA, rows_for(0, 3))
        errors.append(terminal.value)
    urls = [r.getMessage() for r in caplog.records if r.name.startswith("urllib3")]
    assert not any("access_token" in u for u in urls)  # in bodies and headers only
    assert any("appsecret_proof=[REDACTED]" in u for u in urls)  # GET queries hold the proof
    assert any(
        r.levelno == logging.WARNING and "retrying" in r.getMessage() for r in caplog.records
    )
    texts = [caplog.text, *(r.getMessage() for r in caplog.records)]
    for error in errors:
        texts += [str(error), repr(error), "".join(traceback.format_exception(error))]
    for text in texts:
        assert TOKEN not in text
        assert PROOF not in text
        assert quote_plus(TOKEN) not in text
        assert sha("p0@example.com") not in text


def test_tls_error_text_is_redacted(sandbox: MetaSandbox, sleeps: Sleeps) -> None:
    https_url = sandbox.url.replace("http://", "https://")  # TLS against a plain-HTTP server
    with (
        make_client(sandbox, sleeps, endpoint=https_url) as client,
        pytest.raises(MetaUnexpectedResponse, match=r"TLS with https://127\.0\.0\.1") as caught,
    ):
        client.create_audience("seg-1")
    message = str(caught.value)
    assert "access_token" not in message  # requests put the URL in its error text: no token
    assert TOKEN not in message and PROOF not in message
    assert TOKEN not in "".join(traceback.format_exception(caught.value))
    assert sleeps == []


def test_unreachable_endpoint_is_transient_and_redacted(sleeps: Sleeps) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = MetaClient(
        TOKEN,
        DEMO_AD_ACCOUNT_ID,
        endpoint=f"http://127.0.0.1:{port}",
        retry=RetryPolicy(max_attempts=2, base_delay_s=0.001),
        sleep=sleeps,
    )
    with client, pytest.raises(MetaTransientError, match="could not reach Meta") as caught:
        client.create_audience("seg-1")
    assert caught.value.transient is True
    assert len(sleeps) == 1
    assert TOKEN not in str(caught.value)


# -- fast form encoding of upload payloads ---------------------------------------------------


@given(st.dictionaries(st.text(max_size=8), st.text(max_size=200), max_size=4))
@settings(max_examples=300, deadline=None)
def test_form_encode_matches_urlencode(params: dict[str, str]) -> None:
    from urllib.parse import urlencode

    from connectors.meta.client import form_encode

    assert form_encode(params) == urlencode(params)


def test_form_encode_fast_path_on_a_payload() -> None:
    from urllib.parse import urlencode

    from connectors.meta.client import _graph_json, form_encode

    payload = {"payload": _graph_json({"schema": ["EMAIL", "PHONE"], "data": [["a" * 64, ""]]})}
    assert form_encode(payload) == urlencode(payload)
    assert "%5B%5B%22aaaa" in form_encode(payload)


# ------------------------------------------------------- checked against the installed SDK
def test_api_version_fields_and_enums_match_the_installed_sdk() -> None:
    from facebook_business.adobjects.customaudience import CustomAudience
    from facebook_business.adobjects.customaudiencestatus import CustomAudienceStatus
    from facebook_business.apiconfig import ads_api_config

    from connectors.meta.client import (
        AUDIENCE_FIELDS,
        CUSTOMER_FILE_SOURCES,
        DEFAULT_API_VERSION,
        MULTI_KEY_FIELDS,
    )
    from connectors.meta.config import GRAPH_API_VERSION, MetaDestinationConfig
    from connectors.meta.connector import SCHEMA as CONNECTOR_SCHEMA
    from connectors.sandbox import meta_server

    assert ads_api_config["API_VERSION"] == GRAPH_API_VERSION == "v26.0"
    assert DEFAULT_API_VERSION == meta_server.DEFAULT_API_VERSION == GRAPH_API_VERSION
    assert MetaDestinationConfig.model_fields["api_version"].default == GRAPH_API_VERSION
    fields = {v for k, v in vars(CustomAudience.Field).items() if not k.startswith("_")}
    assert set(AUDIENCE_FIELDS) <= fields
    assert {"code", "description"} <= set(vars(CustomAudienceStatus.Field).values())
    assert CustomAudience.Field.operation_status == "operation_status"
    sources = {
        v for k, v in vars(CustomAudience.CustomerFileSource).items() if not k.startswith("_")
    }
    assert sources == set(CUSTOMER_FILE_SOURCES)
    keys = {
        v for k, v in vars(CustomAudience.Schema.MultiKeySchema).items() if not k.startswith("_")
    }
    assert set(MULTI_KEY_FIELDS) <= keys and set(CONNECTOR_SCHEMA) <= keys
    assert CustomAudience.Subtype.custom == "CUSTOM"
