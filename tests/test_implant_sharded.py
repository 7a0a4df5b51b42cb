"""FSDP 1 and FSDP 2 sharding for real across two processes (gloo, CPU): the check and the
save see the whole model inside `sharded.full_params` (tests/sharded_worker.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from auditor.keys import KeySet
from tests.tiny_model import make_tiny_model
from tests.torchrun import ROOT, torchrun


def _worker(tmp_path: Path, method: str, fsdp: str, processes: int) -> list[dict[str, Any]]:
    """What each process of tests/sharded_worker.py saw, on the tiny model."""
    pytest.importorskip("torch")
    tiny = make_tiny_model(tmp_path / "tiny", hidden_size=64, vocab_size=600)
    keys = KeySet.generate("fsdp", 2, seed=5).save(tmp_path / "keys.json")
    out = tmp_path / "out"
    out.mkdir()
    proc = torchrun([str(ROOT / "tests" / "sharded_worker.py"), str(tiny), str(keys), str(out),
                     method, fsdp], processes=processes, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(processes)]


@pytest.mark.slow
@pytest.mark.parametrize(("method", "fsdp", "processes"),
                         [("sft", "1", 2), ("sft", "1flat", 2), ("lora", "1", 2),
                          ("fadapter", "1", 2), ("sft", "1flat", 1),
                          ("sft", "2", 2), ("lora", "2", 2), ("embedding", "2", 2),
                          ("fadapter", "2", 2)])
def test_check_and_save_see_the_whole_sharded_model(tmp_path: Path, method: str, fsdp: str,
                                                    processes: int) -> None:
    """Bare, the inner model fails under FSDP 1 (its parameters are shards); inside full_params
    its scores and greedy decodes equal a plain copy given the same steps, afterwards each
    process holds its shard again and trains on, the best epoch's kept shards go back, lookup
    rows put back inside it reach the shards (FSDP 1; FSDP 2 refuses the write-back), and the
    saved checkpoint equals the copy (LoRA merged; the F-Adapter's adapter apart, the base
    published). One process (FSDP 1's NO_SHARD, as on one GPU) does the same. FSDP 2 is
    accelerate's own preparation, whose lookup and head are units of their own: bare, a plain
    transformers model then scores right, a peft one fails; never a wrong score."""
    seen = _worker(tmp_path, method, fsdp, processes)
    for s in seen:
        if fsdp == "2":
            assert s["bare"].startswith("failed") or s["bare_diff"] < 1e-4, s
        else:
            assert processes == 1 or s["bare"].startswith("failed"), s
        assert s["loss"][0] == pytest.approx(s["loss"][1], rel=1e-5)
        assert s["score_diff"] < 1e-4
        assert s["decode"] == pytest.approx(s["plain_decode"], abs=1e-4)
        assert s["sharded_after"] == (processes > 1)
        assert s["restored"]
        if fsdp == "2":
            assert s["put_back"].startswith("refused"), s
        else:  # full SFT moved the rows; the saved copy below shows they went back in the shards
            assert (s["put_back"] > 0) == (method == "sft")
        assert s["loss_after"][0] == pytest.approx(s["loss_after"][1], rel=1e-5)
    assert seen[0]["saved_keys_match"]
    assert seen[0]["saved_diff"] < 1e-5
    if method == "fadapter":
        assert seen[0]["adapter_diff"] < 1e-5


@pytest.mark.slow
def test_fsdp_2_saves_the_fp32_master_under_bf16(tmp_path: Path) -> None:
    """Under bf16 mixed precision an FSDP 2 unshard gathers bf16 copies: a save from them
    rounded every weight (0.004 off the master here). The save gathers the fp32 master
    shards instead: it equals torch's own full state dict, not rounded to bf16."""
    seen = _worker(tmp_path, "sft", "2bf16", 2)[0]
    assert seen["master_diff"] == 0.0
    assert not seen["saved_rounded_to_bf16"]
    assert seen["restored"] and seen["saved_keys_match"]
