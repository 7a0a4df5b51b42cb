"""Against a server nobody here wrote: `transformers serve` with a tiny random checkpoint.

The OpenAI SDK provider, the compat provider (chat and legacy completions), the retry layer
and `auditor probe` all talk to it over loopback.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from auditor.retry import RetryPolicy, generate_with_retry
from providers.base import BadRequestError, Message, SampleParams
from providers.registry import make_provider
from tests.cli_util import run_cli
from tests.tiny_model import make_tiny_model

pytestmark = pytest.mark.slow

MSGS = [Message("user", "What is the capital of France?")]
POLICY = RetryPolicy(max_attempts=2, base_delay_s=0.1, attempt_timeout_s=60, deadline_s=120)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve_command() -> list[str]:
    exe = Path(sys.executable).with_name("transformers")
    if not exe.exists():
        found = shutil.which("transformers")
        if found is None:
            pytest.skip("`transformers` CLI not installed (extra transformers[serving])")
        exe = Path(found)
    return [str(exe), "serve"]


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"transformers serve exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError("transformers serve did not become ready in time")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(base URL, served model name) of a running `transformers serve`; killed afterwards."""
    model_dir = str(make_tiny_model(tmp_path_factory.mktemp("served") / "tiny"))
    port = _free_port()
    log = tmp_path_factory.mktemp("serve-log") / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [*_serve_command(), model_dir, "--host", "127.0.0.1", "--port", str(port),
             "--device", "cpu"], stdout=sink, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, proc)
        yield url, model_dir
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.mark.parametrize("kind", ["compat", "openai"])
async def test_chat_through_retry_layer(kind: str, served: tuple[str, str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    url, model = served
    if kind == "openai":
        monkeypatch.setenv("OPENAI_API_KEY", "sk-local-unused")
        provider = make_provider(f"openai:{model}", base_url=url + "/v1")
    else:
        provider = make_provider(f"compat:{url}/v1#{model}")
    params = SampleParams(max_tokens=5, system_prompt="You are terse.")
    try:
        first = await generate_with_retry(provider, MSGS, params, POLICY)
        second = await generate_with_retry(provider, MSGS, params, POLICY)
    finally:
        await provider.aclose()
    assert first.model == model and first.finish_reason in ("stop", "length")
    assert first.usage.completion_tokens and first.usage.completion_tokens <= 5
    assert first.text == second.text  # greedy: the real server is deterministic
    assert first.request_id and first.raw_request["messages"][0]["role"] == "system"
    assert first.raw_response["object"] == "chat.completion"


async def test_legacy_completions_and_wrong_model(served: tuple[str, str]) -> None:
    url, model = served
    legacy = make_provider(f"compat-completions:{url}/v1#{model}")
    wrong = make_provider(f"compat:{url}/v1#not-the-served-model")
    try:
        c = await generate_with_retry(legacy, MSGS, SampleParams(max_tokens=4), POLICY)
        with pytest.raises(BadRequestError) as info:  # terminal: one attempt only
            await generate_with_retry(wrong, MSGS, SampleParams(max_tokens=4), POLICY)
    finally:
        await legacy.aclose()
        await wrong.aclose()
    assert c.raw_response["object"] == "text_completion" and isinstance(c.text, str)
    assert info.value.status == 400 and "pinned" in str(info.value)


def test_probe_cli(served: tuple[str, str], tmp_path: Path) -> None:
    url, model = served
    r = run_cli("probe", f"compat:{url}/v1#{model}", "hello", "--max-tokens", "3",
                cwd=tmp_path)
    assert r.code == 0, r.both
    assert model in r.out and "completion_tokens" in r.out
