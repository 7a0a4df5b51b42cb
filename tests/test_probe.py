"""`auditor probe` end to end: the real CLI in a subprocess against the fake server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli_util import run_cli
from tests.fakeserver import FakeLLMServer, Script, openai_error, wire_reply

CANARY = "sk-PROBE-CANARY-0c9d8e7f"


@pytest.fixture
def script() -> Script:
    return Script(default=lambda req: wire_reply(
        req, f"echo:{req.prompt}|sys:{req.system}|t:{req.temperature}"))


def test_probe_compat_prints_reply_model_usage(server: FakeLLMServer, tmp_path: Path) -> None:
    r = run_cli("probe", f"compat:{server.url}/v1#tiny-model", "hello", "--temperature", "0.5",
                "--system", "be nice", cwd=tmp_path)
    assert r.code == 0, r.both
    assert "echo:hello|sys:be nice|t:0.5" in r.out
    assert "tiny-model" in r.out and "latency_s" in r.out and "completion_tokens" in r.out


def test_probe_openai_json_and_retry_notice(script: Script, server: FakeLLMServer,
                                            tmp_path: Path) -> None:
    script.replies.append(openai_error(503, headers={"retry-after-ms": "50"}))
    r = run_cli("probe", "openai:gpt-x", "hi", "--base-url", server.url + "/v1", "--json",
                cwd=tmp_path, env={"OPENAI_API_KEY": CANARY})
    assert r.code == 0, r.both
    data = json.loads(r.out)
    assert data["text"].startswith("echo:hi") and data["model"] == "gpt-x"
    assert data["attempts"] == 2 and "attempt 1: server_error (503)" in r.err
    assert CANARY not in r.both
    assert server.requests[0].headers["authorization"] == f"Bearer {CANARY}"


def test_probe_anthropic(server: FakeLLMServer, tmp_path: Path) -> None:
    r = run_cli("probe", "anthropic:claude-x", "yo", "--base-url", server.url, "--system", "S",
                "--credential-env", "MY_KEY", cwd=tmp_path, env={"MY_KEY": CANARY})
    assert r.code == 0, r.both
    assert "echo:yo|sys:S" in r.out and "claude-x" in r.out and "end_turn" in r.out


def test_probe_missing_credential_names_variable(tmp_path: Path) -> None:
    r = run_cli("probe", "openai:gpt-x", "hi", "--credential-env", "NOPE_UNSET_KEY",
                cwd=tmp_path, env={"NOPE_UNSET_KEY": ""})
    assert r.code == 2 and "NOPE_UNSET_KEY" in r.err and "Traceback" not in r.both


@pytest.mark.parametrize(("args", "needle"), [
    (["bogus:x", "hi"], "unknown provider"),
    (["compat:http://127.0.0.1:1/v1", "hi"], "compat:http://HOST:PORT/v1#MODEL"),
    (["compat:http://127.0.0.1:1/v1#m", "hi", "--temperature", "-1"], "--temperature"),
    (["compat:http://127.0.0.1:1/v1#m", "hi", "--max-tokens", "0"], "--max-tokens"),
])
def test_probe_bad_input_exits_2(args: list[str], needle: str, tmp_path: Path) -> None:
    r = run_cli("probe", *args, cwd=tmp_path)
    assert r.code == 2 and needle in r.err and "Traceback" not in r.both


def test_probe_terminal_error_exits_1_without_secret(script: Script, server: FakeLLMServer,
                                                     tmp_path: Path) -> None:
    script.replies.append(openai_error(401, f"invalid key {CANARY}"))
    r = run_cli("probe", f"compat:{server.url}/v1#m", "hi", "--credential-env", "K",
                cwd=tmp_path, env={"K": CANARY})
    assert r.code == 1 and "auth (HTTP 401)" in r.err and "[redacted]" in r.err
    assert CANARY not in r.both and len(server.requests) == 1
