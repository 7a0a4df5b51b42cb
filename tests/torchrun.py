"""A test's processes started by torchrun on this machine: CPU, gloo, one thread each (more
made two processes thrash on 2 cores: 237 s, not 36)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def torchrun(target: list[str], env: Mapping[str, str] | None = None, *, processes: int = 2,
             drop: tuple[str, ...] = (), timeout: int = 400) -> subprocess.CompletedProcess[str]:
    """`torchrun --standalone` of `target` (a script and its arguments, or "-m", a module, ...)
    from the repository root; `drop`: prefixes of this process's variables left out."""
    full = {n: v for n, v in os.environ.items() if not (drop and n.startswith(drop))}
    full.update({"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
         str(processes), *target],
        capture_output=True, text=True, timeout=timeout, env=full, cwd=ROOT, check=False,
    )
