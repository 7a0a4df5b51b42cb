"""Under a launcher the other processes wait for the main one's evaluation of an attack at
the next attack's start; an NCCL collective gives up after 10 minutes, which an evaluation
(llama.cpp's on CPU, a big model's decoding) can outlast. The wait is on a group of its own
with a long timeout: shown here with a default group that gives up after 3 s."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.torchrun import ROOT, torchrun


def _run(tmp_path: Path, mode: str) -> subprocess.CompletedProcess[str]:
    return torchrun([str(ROOT / "tests" / "wait_worker.py"), str(tmp_path), mode],
                    {"ACCELERATE_USE_CPU": "true"}, timeout=120)


def test_the_others_outwait_the_process_groups_timeout(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    proc = _run(tmp_path, "wait")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)] == ["work-dir"] * 2


def test_on_the_default_group_the_wait_times_out(tmp_path: Path) -> None:
    """The control: the same wait without robustness's group fails."""
    pytest.importorskip("torch")
    proc = _run(tmp_path, "bare")
    assert proc.returncode != 0
    assert "Timed out" in proc.stderr
    assert not (tmp_path / "rank1.txt").exists()
