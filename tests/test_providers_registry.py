"""Endpoint specs, credentials from the environment, and lazy imports."""

from __future__ import annotations

import subprocess
import sys

import pytest

from providers.base import ConfigError, Message, SampleParams
from providers.registry import KNOWN, make_provider
from tests.fakeserver import FakeLLMServer, echo_responder

SECRET = "sk-REGISTRY-CANARY-55aa"


def test_openai_and_anthropic_read_default_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    p = make_provider("openai:gpt-4o-mini")
    assert (p.endpoint_id, p.model) == ("openai:gpt-4o-mini", "gpt-4o-mini")
    assert not p.capabilities().completion_mode
    legacy = make_provider("openai-completions:davinci-002", endpoint_id="base-ep")
    assert legacy.endpoint_id == "base-ep" and legacy.capabilities().completion_mode
    a = make_provider("anthropic:claude-3-5-haiku-latest")
    assert a.endpoint_id == "anthropic:claude-3-5-haiku-latest"
    assert a.concurrency_key() != p.concurrency_key()
    for prov in (p, legacy, a):
        assert SECRET not in repr(prov) + prov.endpoint_id


@pytest.mark.parametrize(("spec", "var"), [("openai:gpt-4o", "OPENAI_API_KEY"),
                                           ("anthropic:claude", "ANTHROPIC_API_KEY")])
def test_missing_variable_is_named(spec: str, var: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match=var):
        make_provider(spec)
    monkeypatch.setenv("OTHER_SECRET_VAR", SECRET)
    with pytest.raises(ConfigError, match="MY_MISSING_VAR") as info:
        make_provider(spec, credential_env="MY_MISSING_VAR")
    assert SECRET not in str(info.value)


async def test_compat_token_is_optional(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMPAT_TOKEN", SECRET)
    with FakeLLMServer(echo_responder("ok")) as srv:
        anon = make_provider(f"compat:{srv.url}/v1#m")
        authed = make_provider(f"compat:{srv.url}/v1/#m", credential_env="COMPAT_TOKEN")
        for p in (anon, authed):
            assert (await p.generate([Message("user", "x")], SampleParams())).text == "ok"
            await p.aclose()
        assert "authorization" not in srv.requests[0].headers
        assert srv.requests[1].headers["authorization"] == f"Bearer {SECRET}"
        assert anon.endpoint_id == f"compat:{srv.url}/v1#m" and anon.model == "m"
        assert authed.endpoint_id == anon.endpoint_id  # trailing slash normalised


@pytest.mark.parametrize(("spec", "needle"), [
    ("nonsense:x", "unknown provider"),
    ("openai", "KIND:TARGET"),
    ("openai:", "KIND:TARGET"),
    ("compat:http://127.0.0.1:8000/v1", "#MODEL"),
    ("compat:ftp://127.0.0.1/v1#m", "http://"),
    (f"compat:http://user:{SECRET}@127.0.0.1:8000/v1#m", "environment variable"),
])
def test_bad_specs(spec: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as info:
        make_provider(spec)
    assert SECRET not in str(info.value)
    if needle == "unknown provider":
        assert all(kind in str(info.value) for kind in KNOWN)


def test_unknown_option_and_bad_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with pytest.raises(ConfigError, match="colour"):
        make_provider("openai:gpt", colour="blue")
    with pytest.raises(ConfigError, match="timeout"):
        make_provider("openai:gpt", timeout_s=0)
    with pytest.raises(ConfigError, match="credential"):
        make_provider("local:smollm2", credential_env="X")


def test_imports_stay_light() -> None:
    """Building a compat or local provider imports neither the SDKs nor torch."""
    code = (
        "import sys, auditor, auditor.retry, providers.registry as r\n"
        "r.make_provider('compat:http://127.0.0.1:9/v1#m')\n"
        "p = r.make_provider('local:smollm2')\n"
        "heavy = [m for m in ('torch', 'transformers', 'openai', 'anthropic') "
        "if m in sys.modules]\n"
        "print(p.endpoint_id, heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.strip() == "local:smollm2 []"
