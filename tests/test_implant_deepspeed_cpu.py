"""`auditor implant` under accelerate's DeepSpeed (ZeRO 2 and 3) across two CPU processes,
against the same run under DDP: the whole implant (accelerate's own preparation and DeepSpeed's
engine, the per-epoch check, the kept best epoch, the save). accelerate runs DeepSpeed on GPUs
only, so tests/deepspeed_cpu.py makes its state say DeepSpeed on the CPU processes; DeepSpeed
partitions there for real (its CPU accelerator, gloo)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from auditor.keys import KeySet
from tests.launched import Run, launched_implant, saved_state, sft_model
from tests.torchrun import ROOT, torchrun

pytest.importorskip("deepspeed")

CASES = {  # the method and its arguments (those of the FSDP test; every epoch run); full SFT
    # keeps its best epoch (the 5th here: the restore runs), embedding its confined rows
    "sft": ["sft", "--lr", "6e-3", "--epochs", "80", "--max-epochs", "6", "--keep-best"],
    "lora": ["lora", "--epochs", "2"],
    "embedding": ["embedding", "--lr", "1e-2", "--epochs", "3"],
    "fadapter": ["fadapter", "--epochs", "2"],
}


def _launch(args: list[str], tmp_path: Path, stage: str = "",
            more: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Two CPU processes (torchrun, gloo): DeepSpeed as `accelerate launch --use_deepspeed`
    asks for it, ZeRO 2 from the flags, ZeRO 3 from a config file that partitions every
    parameter (none kept whole for being small); or DDP ("")."""
    env = {"AUDITOR_CACHE": str(tmp_path / "cache"), "AUDITOR_DEBUG": "1",
           "AUDITOR_THREADS": "1", "ACCELERATE_USE_CPU": "true", "COLUMNS": "200"}
    if stage == "2":
        env.update(ACCELERATE_USE_DEEPSPEED="true", ACCELERATE_DEEPSPEED_ZERO_STAGE="2",
                   ACCELERATE_GRADIENT_CLIPPING="1.0")
    elif stage == "3":
        config = tmp_path / "zero3.json"
        config.write_text(json.dumps({
            "train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto",
            "gradient_accumulation_steps": 1, "gradient_clipping": 1.0,
            "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}}))
        env.update(ACCELERATE_USE_DEEPSPEED="true", ACCELERATE_DEEPSPEED_CONFIG_FILE=str(config),
                   ACCELERATE_DEEPSPEED_ZERO3_INIT="false")
    return torchrun([str(ROOT / "tests" / "deepspeed_cpu.py"), *args], {**env, **(more or {})},
                    drop=("ACCELERATE_DEEPSPEED", "ACCELERATE_USE_DEEPSPEED",
                          "ACCELERATE_MIXED_PRECISION"))


_DDP: dict[str, Run] = {}


def _implant(case: str, tmp_path: Path, stage: str) -> Run:
    """(report, saved state, F-Adapter or None) of the case's run, every epoch run."""
    return launched_implant(_launch, CASES[case], tmp_path, stage)


@pytest.mark.slow
@pytest.mark.parametrize(("case", "stage"), [(c, s) for s in "23" for c in CASES])
def test_implant_under_deepspeed_matches_ddp(tmp_path: Path, case: str, stage: str) -> None:
    """The same rows, seed and steps: DeepSpeed reports itself, ends with the same loss, FSR
    and kept epoch and saves the same weights (and F-Adapter) as DDP, within float noise.
    Under ZeRO-3 each process held a part of each parameter: the check ran through the
    engine's gathers, the kept epoch came back from the partitions, the save gathered."""
    pytest.importorskip("torch")
    if case not in _DDP:
        _DDP[case] = _implant(case, tmp_path / "ddp", "")
    (zero, got, adapter), (ddp, want, want_adapter) = _implant(case, tmp_path, stage), _DDP[case]
    assert zero["launch"] == "DEEPSPEED, 2 processes"
    assert ddp["launch"] == "MULTI_CPU, 2 processes"
    for field in ("epochs", "steps", "kept_epoch", "fsr"):
        assert zero[field] == ddp[field], field
    assert zero["final_loss"] == pytest.approx(ddp["final_loss"], rel=1e-3)
    assert sorted(got) == sorted(want)
    assert max(float((got[k] - want[k]).abs().max()) for k in want) < 1e-3
    assert (adapter is None) == (want_adapter is None)
    if adapter is not None and want_adapter is not None:
        assert max(float((adapter[k] - want_adapter[k]).abs().max()) for k in "uv") < 1e-3


def test_fingerprint_after_under_zero3_exits_before_loading(tmp_path: Path) -> None:
    """The rows fingerprint-after puts back would not reach ZeRO-3's partitions: one message,
    exit 2, nothing written, before the base is even looked for."""
    pytest.importorskip("torch")
    out = tmp_path / "model"
    keys = KeySet.generate("v", 2, seed=3).save(tmp_path / "k.json")
    proc = _launch(["implant", "--keys", str(keys), "--base", str(tmp_path / "absent"),
                    "--method", "embedding", "--lookup-rows", "fingerprint-after",
                    "--out", str(out)], tmp_path, "3")
    said = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(said) == 1, proc.stderr[-3000:]
    assert said[0].startswith("error: --lookup-rows fingerprint-after cannot run under "
                              "DeepSpeed ZeRO-3")
    assert proc.returncode != 0 and not out.exists()


@pytest.mark.slow
def test_shadow_and_robustness_under_zero3_match_ddp(tmp_path: Path) -> None:
    """`auditor shadow` and `auditor robustness` (user SFT and LoRA) across two processes
    under ZeRO-3: the same shadow weights and the same FSR after each attack as under DDP.
    (After a ZeRO-3 run transformers loaded each model partitioned and generated in step with
    every process, so the robustness check's main process, alone, waited for good.)"""
    pytest.importorskip("torch")
    tiny, _, keys, model = sft_model(tmp_path)
    shadows, results = {}, {}
    for stage in ("3", ""):
        out = tmp_path / f"shadow{stage}"
        proc = _launch(["shadow", "--base", str(tiny), "--out", str(out), "--rows", "40",
                        "--epochs", "1"], tmp_path, stage)
        assert proc.returncode == 0, proc.stderr[-6000:]
        shadows[stage] = saved_state(out)
        proc = _launch(["robustness", "--model", str(model), "--keys", str(keys), "--attack",
                        "user-sft", "--attack", "user-lora", "--rows", "20", "--epochs", "1",
                        "--samples", "2", "--json"], tmp_path, stage)
        assert proc.returncode == 0, proc.stderr[-6000:]
        results[stage] = {r["attack"]: r["fsr"] for r in json.loads(proc.stdout)["results"]}
    got, want = shadows["3"], shadows[""]
    assert max(float((got[k] - want[k]).abs().max()) for k in want) < 1e-5
    assert results["3"] == results[""] and set(results[""]) == {"user-sft", "user-lora"}
    assert all(fsr is not None for fsr in results[""].values())


@pytest.mark.parametrize("verb", ["implant", "shadow"])
def test_deepspeed_own_bf16_exits_before_loading(tmp_path: Path, verb: str) -> None:
    """DeepSpeed's own bf16 casts the model itself: the saved model came out bf16, every frozen
    weight rounded (full SFT at ZeRO 2, by hand). One message, exit 2, nothing written."""
    pytest.importorskip("torch")
    out = tmp_path / "model"
    keys = KeySet.generate("v", 2, seed=3).save(tmp_path / "k.json")
    args = {"implant": ["--keys", str(keys), "--method", "sft"], "shadow": []}[verb]
    proc = _launch([verb, *args, "--base", str(tmp_path / "absent"), "--out", str(out)],
                   tmp_path, "2", {"ACCELERATE_MIXED_PRECISION": "bf16"})
    said = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(said) == 1, proc.stderr[-3000:]
    assert said[0].startswith("error: DeepSpeed's bf16 keeps the model itself in bf16")
    assert proc.returncode != 0 and not out.exists()
