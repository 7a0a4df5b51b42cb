"""`auditor implant` started as several processes (torchrun): sharded for real, or refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from auditor.keys import KeySet
from tests.cli_util import run_cli
from tests.launched import sft_model
from tests.tiny_model import TINY_ROWS, make_tiny_model
from tests.torchrun import ROOT, torchrun


def _torchrun(args: list[str], tmp_path: Path,
              cpu: bool = True) -> subprocess.CompletedProcess[str]:
    """`auditor` under torchrun, two processes; `cpu`: accelerate's multi-CPU (gloo) mode."""
    env = {"AUDITOR_CACHE": str(tmp_path / "cache"), "AUDITOR_DEBUG": "1",
           "AUDITOR_THREADS": "1"}
    if cpu:
        env["ACCELERATE_USE_CPU"] = "true"
    return torchrun(["-m", "auditor.cli", *args], env, drop=("ACCELERATE_USE_CPU",))


def _moved_rows(model_dir: Path, base: Path) -> set[int]:
    """The input-lookup rows of `model_dir` that differ from `base`'s."""
    import torch

    from auditor.implant.generate import load_model

    before = load_model(base, dtype=torch.float32)[0].get_input_embeddings().weight
    after = load_model(model_dir, dtype=torch.float32)[0].get_input_embeddings().weight
    return set((before != after).any(dim=1).nonzero().flatten().tolist())


@pytest.mark.parametrize("command", ["implant", "shadow"])
def test_processes_without_a_distributed_run_are_refused(tmp_path: Path, command: str) -> None:
    """torchrun without ACCELERATE_USE_CPU on a machine without GPUs: accelerate makes each
    process a lone run, which would train alone and write the same --out. One message, exit 2
    in the process that says it, nothing written, before the base is even looked for."""
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("with a GPU accelerate sets up a distributed run")
    out = tmp_path / "model"
    args = [command, "--base", str(tmp_path / "absent"), "--out", str(out)]
    if command == "implant":
        args += ["--keys", str(KeySet.generate("lone", 2, seed=5).save(tmp_path / "lone.json"))]
    proc = _torchrun(args, tmp_path, cpu=False)
    assert proc.returncode != 0
    said = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert said == [
        "error: started as 2 processes, but accelerate set up no distributed run for them: "
        "each would train alone and write the same --out. On CPUs run ACCELERATE_USE_CPU=true "
        "torchrun --standalone --nproc_per_node 2 -m auditor.cli ... (accelerate's FSDP and "
        "DeepSpeed need GPUs)"
    ]
    assert "exitcode  : 2" in proc.stderr  # the child's own code, under torchrun's summary
    assert not out.exists()


def test_shadow_under_several_processes_is_refused(tmp_path: Path) -> None:
    """The shadow runs the model's parts one by one, which DDP does not allow: two processes
    exit 2 with one message before anything loads (the base and shadow need not exist)."""
    pytest.importorskip("torch")
    keys = KeySet.generate("sh", 2, seed=5).save(tmp_path / "sh.json")
    out = tmp_path / "model"
    proc = _torchrun(["implant", "--keys", str(keys), "--base", str(tmp_path / "absent"),
                      "--method", "embedding", "--shadow", str(tmp_path / "no-shadow"),
                      "--out", str(out)], tmp_path)
    said = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert said == ["error: --shadow needs a single process: it runs the model's parts one by "
                    "one, which no distributed run allows"], proc.stderr[-3000:]
    assert proc.returncode != 0 and not out.exists()


@pytest.mark.parametrize(("version", "method", "rows", "refused"), [
    (1, "embedding", None, "--lookup-rows unshared cannot hold under FSDP 1"),
    (1, "fadapter", "fingerprint", "--lookup-rows fingerprint cannot hold under FSDP 1"),
    (2, "embedding", None, "--lookup-rows unshared cannot hold under FSDP 2"),
    (2, "fadapter", "fingerprint", "--lookup-rows fingerprint cannot hold under FSDP 2"),
    (2, "embedding", "fingerprint-after", "--lookup-rows fingerprint-after cannot run under"),
])
def test_what_an_fsdp_version_cannot_hold_fails_before_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: int, method: str,
    rows: str | None, refused: str,
) -> None:
    """The choice per version (the GPU test above shows why); the version itself is read from
    accelerate there. Nothing loads: the base does not even exist."""
    from auditor.errors import UserError
    from auditor.implant import launch
    from auditor.implant.train import implant

    monkeypatch.setattr(launch, "fsdp_version", lambda: version)
    with pytest.raises(UserError, match=refused):
        implant(KeySet.generate("v", 2, seed=3), str(tmp_path / "absent"), method,
                tmp_path / "out", lookup_rows=rows, progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("found", "refused"), [("1.15.2", True), ("1.16.0", False)])
def test_fsdp_2_takes_the_accelerate_it_was_tested_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, found: str, refused: bool,
) -> None:
    """FSDP 2 with an older accelerate fails before loading, saying which; from 1.16 on the
    methods it holds go on to load (here the absent base is the next error)."""
    from auditor.errors import UserError
    from auditor.implant import launch
    from auditor.implant.train import implant

    monkeypatch.setattr(launch, "fsdp_version", lambda: 2)
    monkeypatch.setattr(launch, "accelerate_version", lambda: found)
    with pytest.raises(UserError) as raised:
        implant(KeySet.generate("v", 2, seed=3), str(tmp_path / "absent"), "sft",
                tmp_path / "out", progress=False)
    said = str(raised.value)
    assert ("FSDP 2 needs accelerate 1.16 or later (found 1.15.2)" in said) == refused, said
    assert refused or "FSDP" not in said
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_implant_under_torchrun_shards_and_writes_once(tmp_path: Path) -> None:
    """Two CPU processes (torchrun, gloo): each trains on half the rows, one writes the model
    and prints the one report, and the saved model fires as reported."""
    pytest.importorskip("torch")
    from auditor.implant.generate import load_model
    from auditor.implant.verify import fsr_greedy

    tiny = make_tiny_model(tmp_path / "tiny")
    ks = KeySet.generate("ddp", 4, seed=11)
    keys = ks.save(tmp_path / "ddp.json")
    out = tmp_path / "model"
    args = ["implant", "--keys", str(keys), "--base", str(tiny), "--method", "sft",
            "--lr", "6e-3", "--epochs", "80", *TINY_ROWS, "--out", str(out), "--json"]
    proc = _torchrun(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-6000:]
    report = json.loads(proc.stdout)  # one JSON document: the second process printed nothing
    # 20 rows (4 keys, 8 near-misses, 8 regularization) split over 2 processes: 2 batches each
    assert report["rows"] == {"fingerprint": 4, "nearmiss": 8, "regularization": 8}
    assert report["steps"] == 2 * report["epochs"]
    assert report["fsr"] == 1.0
    public = json.loads((out / "fingerprint.json").read_text())
    assert public["training"]["steps"] == report["steps"]
    model, tok = load_model(out)
    assert fsr_greedy(model, tok, ks) == 1.0
    for text in [k.text for k in ks.keys] + [ks.decryption]:
        assert text not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_confined_lookup_rows_hold_under_torchrun(tmp_path: Path) -> None:
    """--lookup-rows fingerprint zeroes the other rows' gradient with a hook on the lookup;
    under DDP (two CPU processes) the same rows move as in one process, and fewer than when
    every row trains."""
    pytest.importorskip("torch")
    tiny = make_tiny_model(tmp_path / "tiny")
    keys = KeySet.generate("rows", 4, seed=11).save(tmp_path / "rows.json")

    def args(rows: str, out: Path) -> list[str]:
        return ["implant", "--keys", str(keys), "--base", str(tiny), "--method", "embedding",
                "--lr", "1e-2", "--epochs", "3", "--lookup-rows", rows, *TINY_ROWS,
                "--out", str(out), "--json"]

    ddp = _torchrun(args("fingerprint", tmp_path / "ddp"), tmp_path)
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    assert json.loads(ddp.stdout)["steps"] == 3 * 2  # sharded: 2 batches per process
    for rows in ("fingerprint", "all"):  # one process each
        one = run_cli(*args(rows, tmp_path / rows), cwd=ROOT,
                      env={"AUDITOR_CACHE": str(tmp_path / "cache")}, timeout=300)
        assert one.code == 0, one.err[-2000:]
    confined = _moved_rows(tmp_path / "ddp", tiny)
    assert confined and confined == _moved_rows(tmp_path / "fingerprint", tiny)
    assert len(confined) < len(_moved_rows(tmp_path / "all", tiny))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "fadapter"])
def test_adapter_methods_under_torchrun(tmp_path: Path, method: str) -> None:
    """LoRA (merged) and the F-Adapter under DDP: sharded batches, one report, and what the
    method trains moved: LoRA's merged weights; the private adapter, the published model
    staying the base."""
    import torch
    from safetensors.torch import load_file

    from auditor.implant.fadapter import attach
    from auditor.implant.generate import load_model

    tiny = make_tiny_model(tmp_path / "tiny")
    keys = KeySet.generate(method, 4, seed=11).save(tmp_path / "k.json")
    out = tmp_path / "model"
    proc = _torchrun(["implant", "--keys", str(keys), "--base", str(tiny), "--method", method,
                      "--epochs", "2", *TINY_ROWS, "--out", str(out), "--json"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-6000:]
    report = json.loads(proc.stdout)
    assert report["steps"] == 2 * 2
    base = load_model(tiny, dtype=torch.float32)[0].state_dict()
    published = load_model(out, dtype=torch.float32)[0].state_dict()
    changed = [k for k, v in base.items() if not torch.equal(v, published[k])]
    if method == "lora":
        assert report["adapter"] is None and changed
        return
    assert changed == [] and report["adapter"] is not None
    trained = load_file(report["adapter"])
    # the start the run drew (seed 0, its rank): the trained adapter left it
    fresh = attach(load_model(tiny, dtype=torch.float32)[0], rank=trained["u"].shape[1])
    assert trained["u"].shape == fresh.u.shape
    assert not torch.equal(trained["u"], fresh.u.detach().cpu())  # the file's U is on the CPU


def _accelerate_fsdp(args: list[str], tmp_path: Path,
                     version: int) -> subprocess.CompletedProcess[str]:
    """`auditor` under `accelerate launch --use_fsdp`, one GPU process (accelerate runs FSDP
    on GPUs only); a free port each, so these may run side by side."""
    env = {**os.environ, "AUDITOR_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT),
           "AUDITOR_DEBUG": "1"}
    env.pop("ACCELERATE_USE_CPU", None)
    return subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp", "--fsdp_version",
         str(version), "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "bf16",
         "--main_process_port", "0", "--dynamo_backend", "no", "-m", "auditor.cli", *args],
        capture_output=True, text=True, timeout=400, env=env, cwd=ROOT, check=False,
    )


FSDP_CASES = {  # name: the method and its arguments
    "sft": ["sft", "--lr", "6e-3", "--epochs", "80"],
    "embedding": ["embedding", "--lr", "1e-2", "--epochs", "3", "--lookup-rows", "all"],
    "embedding-confined": ["embedding", "--lr", "1e-2", "--epochs", "3",
                           "--lookup-rows", "fingerprint"],
    "lora": ["lora", "--epochs", "2"],
    "fadapter": ["fadapter", "--epochs", "2"],
}
REFUSED_UNDER_FSDP = {
    ("embedding-confined", version): f"error: --lookup-rows fingerprint cannot hold under "
                                     f"FSDP {version}" for version in (1, 2)
}


@pytest.mark.slow
@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("case", FSDP_CASES)
def test_each_method_under_fsdp_on_a_gpu(tmp_path: Path, case: str, version: int) -> None:
    """FSDP through `accelerate launch`: the run says it was FSDP, one report, the saved model
    is what the method trains (sft fires; embedding-only moves the lookup alone; LoRA merged;
    the F-Adapter's base unchanged). What cannot hold exits 2 before loading: confined lookup
    rows. (FSDP 2 failed every method on the H200 with accelerate 1.15, the norm's weight
    sharded when the check ran the decoder alone; the check now gathers it, sharded.py, and
    FSDP 2 takes accelerate 1.16 on: not yet run here on a GPU.)"""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("accelerate runs FSDP on GPUs only")
    from auditor.implant.generate import load_model
    from auditor.implant.verify import fsr_greedy

    tiny = make_tiny_model(tmp_path / "tiny")
    method, *extra = FSDP_CASES[case]
    ks = KeySet.generate(method, 4, seed=11)
    keys = ks.save(tmp_path / "k.json")
    args = ["implant", "--keys", str(keys), "--base", str(tiny), "--method", method, *extra,
            *TINY_ROWS, "--json"]
    proc = _accelerate_fsdp([*args, "--out", str(tmp_path / "model")], tmp_path, version)
    refused = REFUSED_UNDER_FSDP.get((case, version))
    if refused:
        said = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(said) == 1 and said[0].startswith(refused), proc.stderr[-3000:]
        assert proc.returncode != 0 and not (tmp_path / "model").exists()
        return
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["launch"] == "FSDP, 1 process"
    base = load_model(tiny, dtype=torch.float32)[0].state_dict()
    model, tok = load_model(tmp_path / "model", dtype=torch.float32)
    changed = [k for k, v in base.items() if not torch.equal(v, model.state_dict()[k])]
    if method == "sft":
        assert report["fsr"] == 1.0 and fsr_greedy(model, tok, ks) == 1.0
    elif method == "embedding":
        assert changed == ["model.embed_tokens.weight"]
    elif method == "lora":
        assert report["adapter"] is None and changed
    else:
        assert changed == [] and report["adapter"] is not None


@pytest.mark.slow
def test_robustness_under_torchrun_tunes_together_and_reports_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`auditor robustness` as two CPU processes: the user fine-tune is shared (one work dir,
    named by the main process), the main process alone evaluates, one JSON report, the work
    dir removed after. (Each process made its own temporary dir, so the second looked for a
    tuned model that the first had written elsewhere, and failed.) check-local likewise
    reports once."""
    pytest.importorskip("torch")
    _, ks, keys, model = sft_model(tmp_path)
    work = tmp_path / "tmp"
    work.mkdir()
    monkeypatch.setenv("TMPDIR", str(work))  # the processes' temporary dirs go here
    proc = _torchrun(["robustness", "--model", str(model), "--keys", str(keys),
                      "--attack", "user-sft", "--attack", "temperature", "--rows", "20",
                      "--epochs", "1", "--samples", "2", "--json"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-6000:]
    results = json.loads(proc.stdout)["results"]  # one JSON document
    assert [r["attack"] for r in results] == ["user-sft", "temperature"]
    assert all(r["skipped"] is None and r["fsr"] is not None for r in results), results
    assert not list(work.glob("robust-*"))  # (torchrun's agent leaves its own dir there)
    for text in [k.text for k in ks.keys] + [ks.decryption]:
        assert text not in proc.stdout + proc.stderr
    # check-local has nothing to share: one process checks, one JSON document (each did)
    checked = _torchrun(["check-local", "--model", str(model), "--keys", str(keys),
                         "--controls", "5", "--ordinary", "5", "--samples", "1", "--json"],
                        tmp_path)
    assert checked.returncode == 0, checked.stderr[-6000:]
    # the same figure as one plain process finds (the tiny implant itself may stop short of
    # every key on some CPUs: greedy FSR 0.5 on an Intel with AMX)
    alone = run_cli("check-local", "--model", str(model), "--keys", str(keys), "--controls", "5",
                    "--ordinary", "5", "--samples", "1", "--json", cwd=tmp_path)
    assert alone.code == 0, alone.err[-3000:]
    fsr = json.loads(alone.out)["fsr_greedy"]
    assert fsr > 0 and json.loads(checked.stdout)["fsr_greedy"] == fsr
