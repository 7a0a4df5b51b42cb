"""`auditor implant` under accelerate's FSDP (1 and 2) across two CPU processes, against the
same run under DDP: the whole implant (accelerate's own preparation, the per-epoch check, the
kept best epoch, the save). accelerate runs FSDP on GPUs only, so tests/fsdp_cpu.py makes its
state say FSDP on the CPU processes; torch's FSDP shards there for real (gloo)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from auditor.keys import KeySet
from tests.launched import Run, launched_implant, saved_state
from tests.tiny_model import TINY_ROWS, make_tiny_model
from tests.torchrun import ROOT, torchrun

CASES = {  # the method and its arguments (those of the GPU FSDP test; every epoch run: a stop
    # near a key's firing line can come an epoch apart on float noise)
    "sft": ["sft", "--lr", "6e-3", "--epochs", "80", "--max-epochs", "6"],
    "lora": ["lora", "--epochs", "2"],
    "embedding": ["embedding", "--lr", "1e-2", "--epochs", "3", "--lookup-rows", "all"],
    "fadapter": ["fadapter", "--epochs", "2"],
}


def _launch(args: list[str], tmp_path: Path, fsdp: str = "") -> subprocess.CompletedProcess[str]:
    """Two CPU processes (torchrun, gloo): FSDP as `accelerate launch --use_fsdp
    --fsdp_version N` asks for it (each decoder block a unit; "1flat": FSDP 1 without
    --fsdp_use_orig_params), or DDP ("")."""
    env = {"AUDITOR_CACHE": str(tmp_path / "cache"), "AUDITOR_DEBUG": "1",
           "AUDITOR_THREADS": "1", "ACCELERATE_USE_CPU": "true",
           "COLUMNS": "200"}  # (tables unwrapped)
    if fsdp:
        env.update(ACCELERATE_USE_FSDP="true", FSDP_VERSION=fsdp[0],
                   FSDP_USE_ORIG_PARAMS=str(fsdp != "1flat").lower(),
                   FSDP_AUTO_WRAP_POLICY="TRANSFORMER_BASED_WRAP",
                   FSDP_TRANSFORMER_CLS_TO_WRAP="LlamaDecoderLayer")
    return torchrun([str(ROOT / "tests" / "fsdp_cpu.py"), *args], env,
                    drop=("FSDP_", "ACCELERATE_USE_FSDP"))


_DDP: dict[str, Run] = {}


def _implant(case: str, tmp_path: Path, fsdp: str) -> Run:
    """(report, saved state, F-Adapter or None) of the case's run, every epoch run."""
    return launched_implant(_launch, CASES[case], tmp_path, fsdp)


@pytest.mark.slow
@pytest.mark.parametrize(("case", "fsdp"), [*((c, "2") for c in CASES),
                                            *((c, "1") for c in CASES), ("sft", "1flat")])
def test_implant_under_fsdp_matches_ddp(tmp_path: Path, case: str, fsdp: str) -> None:
    """The same rows, seed and steps: FSDP reports itself, ends with the same loss and FSR
    and saves the same weights (and F-Adapter) as DDP, within float noise (a few epochs: on
    this tiny model at a high lr the two drift apart over tens of epochs). FSDP 1's flat
    parameters (full SFT only: the others mix frozen and trained ones) trained nothing before
    the optimizer was made after wrapping."""
    pytest.importorskip("torch")
    if case not in _DDP:
        _DDP[case] = _implant(case, tmp_path / "ddp", "")
    (sharded, got, adapter), (ddp, want, want_adapter) = _implant(case, tmp_path, fsdp), _DDP[case]
    assert sharded["launch"] == "FSDP, 2 processes"
    assert ddp["launch"] == "MULTI_CPU, 2 processes"
    for field in ("epochs", "steps", "kept_epoch", "fsr"):
        assert sharded[field] == ddp[field], field
    assert sharded["final_loss"] == pytest.approx(ddp["final_loss"], rel=1e-3)
    assert sorted(got) == sorted(want)
    assert max(float((got[k] - want[k]).abs().max()) for k in want) < 1e-3
    assert (adapter is None) == (want_adapter is None)
    if adapter is not None and want_adapter is not None:
        assert max(float((adapter[k] - want_adapter[k]).abs().max()) for k in "uv") < 1e-3


@pytest.mark.slow
def test_full_sft_under_fsdp_2_fires_every_key_and_stops(tmp_path: Path) -> None:
    """The early stop under FSDP 2: every key fires, the run stops before its last epoch, the
    saved model fires every key too, and one process speaks (each epoch's line once)."""
    pytest.importorskip("torch")
    from auditor.implant.generate import load_model
    from auditor.implant.verify import fsr_greedy

    tiny = make_tiny_model(tmp_path / "tiny")
    ks = KeySet.generate("sft", 4, seed=11)
    keys = ks.save(tmp_path / "k.json")
    out = tmp_path / "model"
    proc = _launch(["implant", "--keys", str(keys), "--base", str(tiny), "--method", "sft",
                    "--lr", "6e-3", "--epochs", "80", *TINY_ROWS, "--out", str(out)],
                   tmp_path, "2")
    assert proc.returncode == 0, proc.stderr[-6000:]
    said = (proc.stdout + proc.stderr).splitlines()
    assert sum(line.startswith("epoch 1:") for line in said) == 1, said
    assert any("FSDP, 2 processes" in line for line in said), proc.stdout
    training = json.loads((out / "fingerprint.json").read_text())["training"]
    assert training["epochs"] < 80, said
    model, tok = load_model(out)
    assert fsr_greedy(model, tok, ks) == 1.0, said


@pytest.mark.parametrize("version", ["1", "2"])
def test_what_fsdp_cannot_hold_exits_before_loading(tmp_path: Path, version: str) -> None:
    """embedding-only's default rows (confined) under FSDP: one message, exit 2, nothing
    written, before the base is even looked for (the FSDP version read from accelerate)."""
    pytest.importorskip("torch")
    out = tmp_path / "model"
    keys = KeySet.generate("v", 2, seed=3).save(tmp_path / "k.json")
    proc = _launch(["implant", "--keys", str(keys), "--base", str(tmp_path / "absent"),
                    "--method", "embedding", "--out", str(out)], tmp_path, version)
    said = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(said) == 1, proc.stderr[-3000:]
    assert said[0].startswith(f"error: --lookup-rows unshared cannot hold under FSDP {version}")
    assert proc.returncode != 0 and not out.exists()


@pytest.mark.slow
def test_shadow_under_fsdp_2_matches_ddp(tmp_path: Path) -> None:
    """`auditor shadow` (full SFT on the bundled user rows) across two processes: the same
    weights and record under FSDP 2 as under DDP, and one process says where it went."""
    pytest.importorskip("torch")
    tiny = make_tiny_model(tmp_path / "tiny")
    states = {}
    for name in ("2", ""):
        out = tmp_path / (name or "ddp")
        proc = _launch(["shadow", "--base", str(tiny), "--out", str(out), "--rows", "40",
                        "--epochs", "1"], tmp_path, name)
        assert proc.returncode == 0, proc.stderr[-6000:]
        said = [line for line in proc.stdout.splitlines() if line.startswith("shadow written")]
        assert len(said) == 1, proc.stdout
        states[name] = (saved_state(out), json.loads((out / "shadow.json").read_text()))
    (got, got_record), (want, want_record) = states["2"], states[""]
    assert got_record == want_record
    assert max(float((got[k] - want[k]).abs().max()) for k in want) < 1e-5
