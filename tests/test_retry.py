"""The one retry layer, driven over real loopback HTTP through the compat provider."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from email.utils import formatdate

import pytest

from auditor.retry import AttemptInfo, RetryPolicy, generate_with_retry, parse_retry_after
from providers import base
from providers.base import Capabilities, Completion, Message, RetryDecision, SampleParams
from providers.openai_compatible import OpenAICompatibleProvider
from tests.fakeserver import FakeLLMServer, FakeReply, Script, openai_error

FAST = RetryPolicy(max_attempts=4, base_delay_s=0.01, max_delay_s=0.05, attempt_timeout_s=5.0,
                   deadline_s=20.0)
MSGS = [Message("user", "ping")]


class Recorder:
    def __init__(self) -> None:
        self.infos: list[AttemptInfo] = []

    async def __call__(self, info: AttemptInfo) -> None:
        self.infos.append(info)


@pytest.fixture
async def setup() -> AsyncIterator[tuple[Script, FakeLLMServer, OpenAICompatibleProvider]]:
    script = Script()
    with FakeLLMServer(script) as srv:
        provider = OpenAICompatibleProvider(srv.url + "/v1", "tiny", timeout_s=30)
        yield script, srv, provider
        await provider.aclose()


Setup = tuple[Script, FakeLLMServer, OpenAICompatibleProvider]


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504, 529])
async def test_retryable_status_is_retried(status: int, setup: Setup) -> None:
    script, srv, provider = setup
    script.replies += [openai_error(status), openai_error(status)]
    rec = Recorder()
    c = await generate_with_retry(provider, MSGS, SampleParams(), FAST, rec)
    assert c.text == "ok" and len(srv.requests) == 3
    assert [i.attempt for i in rec.infos] == [1, 2, 3]
    assert [i.final for i in rec.infos] == [False, False, True]
    assert all(i.error and i.error.status == status for i in rec.infos[:2])
    assert all(i.wait_s is not None and 0 < i.wait_s <= 0.05 for i in rec.infos[:2])
    assert rec.infos[2].completion is c and rec.infos[2].wait_s is None


@pytest.mark.parametrize(("status", "code"), [(400, None), (401, None), (403, None),
                                              (404, None), (422, None),
                                              (429, "insufficient_quota")])
async def test_terminal_status_is_not_retried(status: int, code: str | None,
                                              setup: Setup) -> None:
    script, srv, provider = setup
    script.replies.append(openai_error(status, code=code))
    rec = Recorder()
    with pytest.raises(base.TerminalError) as info:
        await generate_with_retry(provider, MSGS, SampleParams(), FAST, rec)
    assert info.value.status == status and len(srv.requests) == 1
    assert len(rec.infos) == 1 and rec.infos[0].final and rec.infos[0].error is info.value


def _gap(srv: FakeLLMServer) -> float:
    return srv.requests[1].t - srv.requests[0].t


@pytest.mark.parametrize(("headers", "least"), [
    ({"retry-after": "1"}, 1.0),
    ({"retry-after-ms": "300", "retry-after": "9"}, 0.3),  # ms wins over seconds
])
async def test_retry_after_is_honoured(headers: dict[str, str], least: float,
                                       setup: Setup) -> None:
    script, srv, provider = setup
    script.replies.append(openai_error(429, headers=headers))
    rec = Recorder()
    await generate_with_retry(provider, MSGS, SampleParams(), FAST, rec)
    assert rec.infos[0].wait_s == pytest.approx(least)
    assert least <= _gap(srv) < least + 1.0


async def test_retry_after_http_date_is_honoured(setup: Setup) -> None:
    script, srv, provider = setup
    when = formatdate(time.time() + 2.0, usegmt=True)  # whole seconds: 1 < wait <= 2
    script.replies.append(openai_error(503, headers={"retry-after": when}))
    rec = Recorder()
    await generate_with_retry(provider, MSGS, SampleParams(), FAST, rec)
    wait = rec.infos[0].wait_s
    assert wait is not None and 0.9 < wait <= 2.0
    assert _gap(srv) >= wait


async def test_retry_after_over_cap_fails_as_rate_limited(setup: Setup) -> None:
    script, srv, provider = setup
    script.replies.append(openai_error(503, headers={"retry-after": "500"}))
    rec = Recorder()
    t0 = time.monotonic()
    with pytest.raises(base.RateLimitedError, match="over the cap") as info:
        await generate_with_retry(provider, MSGS, SampleParams(), FAST, rec)
    assert time.monotonic() - t0 < 1.0 and len(srv.requests) == 1
    assert info.value.retry_after_s == 500 and info.value.status == 503
    assert rec.infos[-1].final and rec.infos[-1].error is info.value


async def test_stall_times_out_within_deadline(setup: Setup) -> None:
    script, srv, provider = setup
    script.replies += [FakeReply(stall=True)] * 10
    policy = RetryPolicy(max_attempts=10, base_delay_s=0.01, attempt_timeout_s=0.6,
                         deadline_s=1.5)
    rec = Recorder()
    t0 = time.monotonic()
    with pytest.raises(base.TimeoutError_):
        await generate_with_retry(provider, MSGS, SampleParams(), policy, rec)
    assert time.monotonic() - t0 <= policy.deadline_s + 1.0
    assert len(rec.infos) >= 2 and rec.infos[-1].final
    assert len(srv.requests) == len(rec.infos)  # one request per reported attempt
    assert all(isinstance(i.error, base.TimeoutError_) for i in rec.infos)


async def test_gives_up_after_max_attempts(setup: Setup) -> None:
    script, srv, provider = setup
    script.replies += [openai_error(500)] * 10
    rec = Recorder()
    with pytest.raises(base.ServerError):
        await generate_with_retry(provider, MSGS, SampleParams(), FAST, rec)
    assert len(srv.requests) == FAST.max_attempts == len(rec.infos)
    assert [i.final for i in rec.infos] == [False] * 3 + [True]


async def test_backoff_grows_exponentially(setup: Setup) -> None:
    script, srv, provider = setup
    script.replies += [openai_error(500)] * 3
    policy = RetryPolicy(max_attempts=4, base_delay_s=0.1, max_delay_s=10.0)
    rec = Recorder()
    await generate_with_retry(provider, MSGS, SampleParams(), policy, rec)
    waits = [i.wait_s or 0.0 for i in rec.infos[:3]]
    assert len(srv.requests) == 4
    for n, wait in enumerate(waits):
        assert 0.05 * 2**n <= wait <= 0.1 * 2**n  # jitter within [half, full] of the step


async def test_callback_completes_before_next_attempt(setup: Setup) -> None:
    script, srv, provider = setup
    script.replies.append(openai_error(500))
    done: list[float] = []

    async def slow_commit(info: AttemptInfo) -> None:
        await asyncio.sleep(0.3)
        done.append(time.monotonic())

    await generate_with_retry(provider, MSGS, SampleParams(), FAST, slow_commit)
    assert len(done) == 2 and srv.requests[1].t >= done[0]


class Exploding:
    """A broken provider: raises a raw exception the engine must never see."""

    endpoint_id = "broken"
    model = "broken"

    def __init__(self, exc: Exception) -> None:
        self.exc = exc
        self.calls = 0

    async def generate(self, messages: Sequence[Message], params: SampleParams) -> Completion:
        self.calls += 1
        raise self.exc

    def classify_error(self, exc: BaseException) -> RetryDecision:
        return base.classify(exc)

    def concurrency_key(self) -> str:
        return "broken"

    def capabilities(self) -> Capabilities:
        return Capabilities()

    async def aclose(self) -> None:
        return None


@pytest.mark.parametrize(("exc", "cls", "calls"), [
    (RuntimeError("boom secret"), base.ProviderError, 1),
    (ConnectionResetError(), base.ConnectionFailed, 3),
    (TimeoutError(), base.TimeoutError_, 3),
])
async def test_raw_exceptions_are_wrapped(exc: Exception, cls: type[base.ProviderError],
                                          calls: int) -> None:
    provider = Exploding(exc)
    policy = RetryPolicy(max_attempts=3, base_delay_s=0.01)
    with pytest.raises(cls) as info:
        await generate_with_retry(provider, MSGS, SampleParams(), policy)
    assert provider.calls == calls and "secret" not in str(info.value)


def test_parse_retry_after_forms() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after({"Retry-After": "7"}) == 7.0
    assert parse_retry_after({"retry-after-ms": "250"}) == 0.25
    assert parse_retry_after({"retry-after": formatdate(now + 30, usegmt=True)}, now) == 30.0
    assert parse_retry_after({"retry-after": formatdate(now - 30, usegmt=True)}, now) == 0.0
    for garbled in ("soon", "-3", "nan", "", "Mon, 99 Foo 2024"):
        assert parse_retry_after({"retry-after": garbled}) is None
    assert parse_retry_after({}) is None
    assert parse_retry_after({"retry-after-ms": "x", "retry-after": "2"}) == 2.0
