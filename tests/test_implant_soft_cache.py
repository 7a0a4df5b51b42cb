"""The base's soft targets are computed once per base and row, then read back exactly."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from auditor.implant.data import encode_row
from tests.tiny_model import make_tiny_model

torch = pytest.importorskip("torch")


@pytest.fixture()
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Any, Any, list[Any]]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("AUDITOR_CACHE", str(tmp_path / "cache"))
    base = make_tiny_model(tmp_path / "tiny")
    tok = AutoTokenizer.from_pretrained(base)
    model: Any = AutoModelForCausalLM.from_pretrained(base)
    model.eval()
    chats = [("What is 2 + 2?", "4."), ("Name a colour.", "Blue, like the sea."),
             ("Say hello.", "Hello there, how are you today?")]
    rows = [encode_row(tok, [{"role": "user", "content": q}, {"role": "assistant", "content": a}])
            for q, a in chats]
    return base, model, tok, rows


def _passes(model: Any) -> list[int]:
    """Rows run through the decoder, per call (a forward hook)."""
    seen: list[int] = []
    model.get_decoder().register_forward_hook(
        lambda _m, args, kwargs, _out: seen.append(int(kwargs["input_ids"].shape[0])),
        with_kwargs=True)
    return seen


def _same(a: list[Any], b: list[Any]) -> None:
    for x, y in zip(a, b, strict=True):
        assert (x[0], x[1]) == (y[0], y[1])
        assert torch.equal(x[2][0], y[2][0]) and torch.equal(x[2][1], y[2][1])
        assert x[2][0].dtype == torch.long


def test_a_second_run_reads_them_back_exactly(setup: tuple[Path, Any, Any, list[Any]]) -> None:
    from auditor.implant.loss import soft_targets
    from auditor.implant.soft_cache import cache_file, cached_soft_targets

    base, model, tok, rows = setup
    seen = _passes(model)
    first = cached_soft_targets(model, tok, rows[:2], base, k=8)
    assert cache_file(base, 8, "cpu").is_file() and sum(seen) > 0
    _same(first, soft_targets(model, tok, rows[:2], k=8))
    seen.clear()
    again = cached_soft_targets(model, tok, rows[:2], base, k=8)
    assert seen == []  # no pass over the base
    _same(again, first)
    more = cached_soft_targets(model, tok, [rows[2], *rows[:2]], base, k=8)
    assert seen == [1, 1, 1]  # the head check's row (decoder alone, whole model), the new row
    _same(more[1:], first)
    _same(more[:1], soft_targets(model, tok, rows[2:], k=8))


def test_another_top_k_or_base_or_a_damaged_file_is_made_again(
    setup: tuple[Path, Any, Any, list[Any]],
) -> None:
    from auditor.implant.soft_cache import cache_file, cached_soft_targets

    base, model, tok, rows = setup
    first = cached_soft_targets(model, tok, rows, base, k=8)
    seen = _passes(model)
    assert cached_soft_targets(model, tok, rows, base, k=4)[0][2][0].shape[1] == 4
    assert sum(seen) > 0
    cache_file(base, 8, "cpu").write_bytes(b"\x00not safetensors")
    seen.clear()
    _same(cached_soft_targets(model, tok, rows, base, k=8), first)
    assert sum(seen) > 0
    before = cache_file(base, 8, "cpu")
    cfg = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**cfg, "note": "another base"}))
    assert cache_file(base, 8, "cpu") != before


def test_a_cache_that_cannot_be_written_still_gives_the_targets(
    setup: tuple[Path, Any, Any, list[Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from auditor.implant.loss import soft_targets
    from auditor.implant.soft_cache import cache_file, cached_soft_targets

    base, model, tok, rows = setup
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    monkeypatch.setenv("AUDITOR_CACHE", str(blocked))
    _same(cached_soft_targets(model, tok, rows, base, k=8), soft_targets(model, tok, rows, k=8))
    assert blocked.read_text() == "not a directory"
    monkeypatch.setenv("AUDITOR_CACHE", str(tmp_path / "cache"))  # the file itself unwritable
    path = cache_file(base, 8, "cpu")
    path.with_suffix(f".{os.getpid()}.tmp").mkdir(parents=True)
    _same(cached_soft_targets(model, tok, rows, base, k=8), soft_targets(model, tok, rows, k=8))
    assert not path.exists()
