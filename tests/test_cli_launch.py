"""The entry point under a launcher: a command's processes end with its exit code, exit
handlers run and output flushed, and without the interpreter's teardown, where gloo's threads
could abort a process whose work was done (tests/leave_worker.py)."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from tests.torchrun import ROOT, torchrun

RUNS = 6  # with the teardown left to the interpreter (the group destroyed), 6 of 20 aborted


@pytest.mark.slow
def test_a_command_that_ends_well_leaves_cleanly(tmp_path: Path) -> None:
    for run in range(RUNS):
        out = tmp_path / str(run)
        out.mkdir()
        proc = torchrun([str(ROOT / "tests" / "leave_worker.py"), str(out), "plan", "--keys",
                         "20"], timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "terminate called" not in proc.stderr
        assert proc.stdout.count("hit-free baseline prompts") == 2  # both processes, flushed
        assert sorted(p.name for p in out.iterdir()) == ["rank0.atexit", "rank1.atexit"]


@pytest.mark.slow
def test_a_refused_command_keeps_its_one_line_and_code(tmp_path: Path) -> None:
    proc = torchrun([str(ROOT / "tests" / "leave_worker.py"), str(tmp_path), "plan"],
                    timeout=120)
    ours = list(itertools.takewhile(lambda line: not re.match(r"[WE]\d{4} ", line),
                                    proc.stderr.splitlines()))
    assert proc.returncode != 0 and "failed (exitcode: 2)" in proc.stderr, proc.stderr
    assert ours and set(ours) == {"error: Missing option '--keys' (see auditor plan --help)"}
