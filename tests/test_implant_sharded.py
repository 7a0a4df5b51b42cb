"""FSDP 1 sharding for real across two processes (gloo, CPU): the check and the save see the
whole model inside `sharded.full_params`, and only there (tests/sharded_worker.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from auditor.keys import KeySet
from tests.tiny_model import make_tiny_model

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.parametrize(("method", "orig", "processes"),
                         [("sft", "1", 2), ("sft", "0", 2), ("lora", "1", 2), ("fadapter", "1", 2),
                          ("sft", "0", 1)])
def test_check_and_save_see_the_whole_sharded_model(tmp_path: Path, method: str, orig: str,
                                                    processes: int) -> None:
    """Bare, the inner model fails (its parameters are shards); inside full_params its scores
    and greedy decodes equal a plain copy given the same steps, afterwards each process holds
    its shard again and trains on, lookup rows put back inside it reach the shards, and the
    saved checkpoint equals the copy (LoRA merged; the F-Adapter's adapter apart, the base
    published). One process (FSDP's NO_SHARD, as on one GPU) does the same."""
    pytest.importorskip("torch")
    tiny = make_tiny_model(tmp_path / "tiny", hidden_size=64, vocab_size=600)
    keys = KeySet.generate("fsdp", 2, seed=5).save(tmp_path / "keys.json")
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
         str(processes), str(ROOT / "tests" / "sharded_worker.py"), str(tiny), str(keys),
         str(out), method, orig],
        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = [json.loads((out / f"rank{r}.json").read_text()) for r in range(processes)]
    for s in seen:
        assert processes == 1 or s["bare"].startswith("failed"), s
        assert s["loss"][0] == pytest.approx(s["loss"][1], rel=1e-5)
        assert s["score_diff"] < 1e-4
        assert s["decode"] == pytest.approx(s["plain_decode"], abs=1e-4)
        assert s["sharded_after"] == (processes > 1)
        # full SFT moved the rows; the saved copy below shows they went back in the shards
        assert (s["put_back"] > 0) == (method == "sft")
        assert s["loss_after"][0] == pytest.approx(s["loss_after"][1], rel=1e-5)
    assert seen[0]["saved_keys_match"]
    assert seen[0]["saved_diff"] < 1e-5
    if method == "fadapter":
        assert seen[0]["adapter_diff"] < 1e-5
