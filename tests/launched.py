"""What the multi-process implant tests share: a launched implant's report and saved weights,
and a tiny model implanted by full SFT for the robustness runs."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from auditor.keys import KeySet
from tests.tiny_model import TINY_ROWS, make_tiny_model

Launch = Callable[[list[str], Path, str], subprocess.CompletedProcess[str]]
Run = tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]


def saved_state(model_dir: Path) -> dict[str, Any]:
    """The saved model's weights, in fp32."""
    import torch

    from auditor.implant.generate import load_model

    return dict(load_model(model_dir, dtype=torch.float32)[0].state_dict())


def launched_implant(launch: Launch, method_args: list[str], tmp_path: Path, mode: str) -> Run:
    """(report, saved state, F-Adapter or None) of `auditor implant` launched in `mode`
    (`launch`'s third argument; "" for DDP) on the tiny model, every epoch run; checks that
    no key text reached the output."""
    from safetensors.torch import load_file

    tiny = make_tiny_model(tmp_path / "tiny")  # the same weights each time (seeded)
    method, *extra = method_args
    ks = KeySet.generate(method, 4, seed=11)
    keys = ks.save(tmp_path / "k.json")
    out = tmp_path / f"out-{mode or 'ddp'}"
    proc = launch(["implant", "--keys", str(keys), "--base", str(tiny), "--method", method,
                   *extra, *TINY_ROWS, "--no-early-stop", "--out", str(out), "--json"],
                  tmp_path, mode)
    assert proc.returncode == 0, proc.stderr[-6000:]
    for text in [k.text for k in ks.keys] + [ks.decryption]:
        assert text not in proc.stdout + proc.stderr
    report = json.loads(proc.stdout)  # launchers' own log lines go to stderr
    return report, saved_state(out), load_file(report["adapter"]) if report["adapter"] else None


def sft_model(tmp_path: Path) -> tuple[Path, KeySet, Path, Path]:
    """(tiny base, key set, its file, the base implanted by full SFT in one process)."""
    from tests.cli_util import run_cli

    tiny = make_tiny_model(tmp_path / "tiny")
    ks = KeySet.generate("rob", 2, seed=11)
    keys = ks.save(tmp_path / "rob.json")
    model = tmp_path / "model"
    made = run_cli("implant", "--keys", str(keys), "--base", str(tiny), "--method", "sft",
                   "--lr", "6e-3", "--epochs", "80", *TINY_ROWS, "--out", str(model), "--json",
                   cwd=tmp_path, env={"AUDITOR_CACHE": str(tmp_path / "cache")}, timeout=300)
    assert made.code == 0, made.err[-3000:]
    return tiny, ks, keys, model
