"""Providers against the fake server over real loopback HTTP (official SDKs included)."""

from __future__ import annotations

import logging

import pytest

from providers import base
from providers.base import Message, Provider, SampleParams
from providers.registry import make_provider
from tests.fakeserver import (
    FakeLLMServer,
    FakeReply,
    FakeRequest,
    Script,
    anthropic_error,
    openai_error,
    wire_reply,
)

CANARY_KEY = "sk-CANARY-7f3a9c1e5b2d4f60"
SECRET_PROMPT = "zq-secret-fingerprint-key-text-91"
KINDS = ["openai", "compat", "anthropic"]


@pytest.fixture(autouse=True)
def _keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", CANARY_KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", CANARY_KEY)
    monkeypatch.setenv("COMPAT_KEY", CANARY_KEY)


@pytest.fixture
def script() -> Script:
    return Script(default=lambda req: wire_reply(req, "pong " + req.prompt))


def provider_for(kind: str, srv: FakeLLMServer, **kw: object) -> Provider:
    if kind == "openai":
        return make_provider("openai:gpt-test", base_url=srv.url + "/v1", **kw)  # type: ignore[arg-type]
    if kind == "anthropic":
        return make_provider("anthropic:claude-test", base_url=srv.url, **kw)  # type: ignore[arg-type]
    return make_provider(f"compat:{srv.url}/v1#tiny", credential_env="COMPAT_KEY", **kw)  # type: ignore[arg-type]


def error_for(kind: str, status: int, code: str | None = None,
              headers: dict[str, str] | None = None, message: str = "nope") -> FakeReply:
    if kind == "anthropic":
        return anthropic_error(status, code or "api_error", message, headers=headers)
    return openai_error(status, message, code=code, headers=headers)


MSGS = [Message("user", "ping")]


@pytest.mark.parametrize("kind", KINDS)
async def test_success_round_trip(kind: str, server: FakeLLMServer) -> None:
    p = provider_for(kind, server)
    params = SampleParams(temperature=0.7, max_tokens=20, system_prompt="be brief", stop=("##",))
    c = await p.generate(MSGS, params)
    await p.aclose()
    assert c.text == "pong ping"
    assert c.finish_reason in ("stop", "end_turn")
    assert c.model == server.requests[0].model
    assert c.usage.completion_tokens == 2 and c.usage.prompt_tokens == 5
    assert c.request_id and c.latency_s > 0
    req = server.requests[0]
    assert req.system == "be brief" and req.temperature == 0.7 and req.prompt == "ping"
    assert req.headers.get("authorization") == f"Bearer {CANARY_KEY}" or \
        req.headers.get("x-api-key") == CANARY_KEY
    assert c.raw_request == req.json  # the evidence holds exactly what went on the wire
    assert CANARY_KEY not in repr(c.raw_request) and c.raw_response["model"] == c.model
    assert p.endpoint_id.startswith(kind) and CANARY_KEY not in p.endpoint_id + repr(p)


@pytest.mark.parametrize("model", ["o4-mini", "gpt-5-mini", "ft:o3:acme::x1"])
async def test_reasoning_models_get_their_parameters(model: str, server: FakeLLMServer) -> None:
    """Reasoning models reject temperature/stop and need max_completion_tokens."""
    p = make_provider(f"openai:{model}", base_url=server.url + "/v1")
    params = SampleParams(temperature=0.0, max_tokens=20, top_p=0.9, stop=("##",))
    c = await p.generate(MSGS, params)
    await p.aclose()
    body = server.requests[0].json
    assert isinstance(body, dict) and body["max_completion_tokens"] >= 20
    assert not {"temperature", "max_tokens", "top_p", "stop"} & set(body)
    assert c.text == "pong ping" and c.raw_request == body  # the record shows what was sent
    plain = make_provider("openai:gpt-4o-mini", base_url=server.url + "/v1")
    await plain.generate(MSGS, params)
    await plain.aclose()
    plain_body = server.requests[1].json
    assert isinstance(plain_body, dict)
    assert plain_body["temperature"] == 0.0 and plain_body["max_tokens"] == 20


@pytest.mark.parametrize("spec", ["openai-completions:base-test", "compat-completions"])
async def test_legacy_completions(spec: str, server: FakeLLMServer) -> None:
    if spec == "compat-completions":
        p = make_provider(f"compat-completions:{server.url}/v1#tiny")
    else:
        p = make_provider(spec, base_url=server.url + "/v1")
    c = await p.generate(MSGS, SampleParams(system_prompt="S"))
    await p.aclose()
    assert server.requests[0].path == "/v1/completions"
    assert server.requests[0].json["prompt"] == "S\n\nping"  # type: ignore[index]
    assert c.text == "pong S\n\nping" and p.capabilities().completion_mode


STATUS_CASES = [
    (400, None, base.BadRequestError), (422, None, base.BadRequestError),
    (401, None, base.AuthError), (403, None, base.PermissionDeniedError),
    (404, None, base.NotFoundError), (429, None, base.RateLimitedError),
    (429, "insufficient_quota", base.QuotaExhaustedError), (408, None, base.ServerError),
    (409, None, base.ServerError), (500, None, base.ServerError), (503, None, base.ServerError),
    (529, None, base.OverloadedError),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("status", "code", "cls"), STATUS_CASES)
async def test_status_maps_to_typed_error(kind: str, status: int, code: str | None,
                                          cls: type[base.ProviderError], script: Script,
                                          server: FakeLLMServer) -> None:
    script.replies.append(error_for(kind, status, code, headers={"retry-after": "3"}))
    p = provider_for(kind, server)
    with pytest.raises(cls) as info:
        await p.generate(MSGS, SampleParams())
    await p.aclose()
    err = info.value
    assert type(err) is cls and err.status == status
    assert len(server.requests) == 1  # SDKs built with max_retries=0: one attempt, one request
    assert err.request_id and err.request_id.startswith("req_err")
    assert err.retry_after_s == 3.0 and "nope" in str(err)
    assert p.classify_error(err).retry == issubclass(cls, base.TransientError)


async def test_anthropic_overloaded_type_without_529(script: Script,
                                                     server: FakeLLMServer) -> None:
    script.replies.append(anthropic_error(500, "overloaded_error"))
    p = provider_for("anthropic", server)
    with pytest.raises(base.OverloadedError):
        await p.generate(MSGS, SampleParams())
    await p.aclose()


def _bad_json(req: FakeRequest) -> FakeReply:
    return FakeReply(body=b'{"choices": [')


def _empty_choices(req: FakeRequest) -> FakeReply:
    reply = wire_reply(req, "x")
    assert isinstance(reply.body, dict)
    reply.body["content" if req.path.endswith("/messages") else "choices"] = []
    return reply


def _html(req: FakeRequest) -> FakeReply:
    return FakeReply(body="<html>gateway</html>", content_type="text/html")


def _oversize(req: FakeRequest) -> FakeReply:
    reply = wire_reply(req, "y" * (5 * 1024 * 1024))
    return reply


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("make", [_bad_json, _empty_choices, _html, _oversize])
async def test_malformed_responses(kind: str, make: object, script: Script,
                                   server: FakeLLMServer) -> None:
    server.responder = make  # type: ignore[assignment]
    p = provider_for(kind, server)
    with pytest.raises(base.MalformedResponseError):
        await p.generate(MSGS, SampleParams())
    await p.aclose()


async def test_compat_bounds_body_size(script: Script, server: FakeLLMServer) -> None:
    script.replies.append(wire_reply(FakeRequest("POST", "/v1/chat/completions", {}, b"", {},
                                                 0.0), "z" * 5000))
    p = make_provider(f"compat:{server.url}/v1#tiny", max_response_bytes=1000)
    with pytest.raises(base.MalformedResponseError, match="over 1000 bytes"):
        await p.generate(MSGS, SampleParams())
    await p.aclose()


@pytest.mark.parametrize("kind", KINDS)
async def test_reset_and_refused_are_connection_errors(kind: str, script: Script,
                                                       server: FakeLLMServer) -> None:
    script.replies.append(FakeReply(reset=True))
    p = provider_for(kind, server)
    with pytest.raises(base.ConnectionFailed):
        await p.generate(MSGS, SampleParams())
    await p.aclose()
    url = server.url
    server.stop()
    dead = FakeLLMServer(script)
    dead.url = url  # nothing listens there any more
    p = provider_for(kind, dead)
    with pytest.raises(base.ConnectionFailed):
        await p.generate(MSGS, SampleParams())
    await p.aclose()


@pytest.mark.parametrize("kind", KINDS)
async def test_stall_is_a_timeout(kind: str, script: Script, server: FakeLLMServer) -> None:
    script.replies.append(FakeReply(stall=True))
    p = provider_for(kind, server, timeout_s=0.5)
    with pytest.raises(base.TimeoutError_):
        await p.generate(MSGS, SampleParams())
    await p.aclose()


@pytest.mark.parametrize("kind", KINDS)
async def test_canary_never_leaks(kind: str, server: FakeLLMServer,
                                  caplog: pytest.LogCaptureFixture) -> None:
    """A hostile server echoes the API key and the prompt in its error message."""
    def echo_secrets(req: FakeRequest) -> FakeReply:
        auth = req.headers.get("authorization") or req.headers.get("x-api-key", "")
        return error_for(kind, 401, message=f"bad key {auth} for prompt {req.prompt}")

    server.responder = echo_secrets
    caplog.set_level(logging.DEBUG)
    p = provider_for(kind, server)
    with pytest.raises(base.AuthError) as info:
        await p.generate([Message("user", SECRET_PROMPT)], SampleParams())
    await p.aclose()
    err = info.value
    texts = [str(err), repr(err), err.body or "", repr(err.to_dict()), caplog.text, repr(p)]
    for text in texts:
        assert CANARY_KEY not in text and SECRET_PROMPT not in text
    assert "[redacted]" in str(err)
