"""One process of tests/test_cli_launch.py, started by torchrun (gloo, CPU).

Makes the process group and keeps a reference to it past the command, as a trained FSDP
model does, then runs `auditor ARGS...` through the real entry point, the command followed by a
gather and a barrier, as an implant's last write is (train.on_main). Each exit handler writes
OUT/rank<N>.atexit, so the test sees that they ran.
Usage: leave_worker.py OUT ARGS...
"""

from __future__ import annotations

import atexit
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

import auditor.cli

HELD: list[Any] = []  # the group and the gathered tensors, alive until the teardown
COMMANDS = auditor.cli.app


def _then_gather(**kwargs: Any) -> Any:
    """The command, then what the end of an FSDP implant does: gather whole tensors (kept
    alive), then wait for every process."""
    rc = COMMANDS(**kwargs)
    rank = torch.tensor([float(dist.get_rank())])
    HELD.extend([rank, [torch.zeros(1) for _ in range(dist.get_world_size())]])
    dist.all_gather(HELD[-1], rank)
    dist.barrier()
    return rc


def _mark(out: Path, rank: int) -> None:
    (out / f"rank{rank}.atexit").write_text("ran", encoding="utf-8")


if __name__ == "__main__":
    out = Path(sys.argv[1])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    HELD.append(dist.group.WORLD)
    atexit.register(_mark, out, rank)
    sys.argv = ["auditor", *sys.argv[2:]]
    os.environ["COLUMNS"] = "200"
    auditor.cli.app = _then_gather  # type: ignore[assignment]
    auditor.cli.main()
