"""One process of tests/test_robustness_wait.py, started by torchrun (gloo, CPU).

The process group gives up on a collective after 3 s; the main process takes 6 s before it
names the work dir, as it would while it evaluates the attack before. `wait`: through
robustness's own broadcast, which waits on its long-timeout group; `bare`: on the default
group, which times out. Writes what it got to OUT/rank<N>.txt.
Usage: wait_worker.py OUT wait|bare
"""

from __future__ import annotations

import sys
import time
from datetime import timedelta
from pathlib import Path


def main() -> None:
    import torch.distributed as dist

    out, mode = Path(sys.argv[1]), sys.argv[2]
    dist.init_process_group("gloo", timeout=timedelta(seconds=3))
    rank = dist.get_rank()
    if mode == "wait":
        from auditor.implant.robustness import _processes

        processes = _processes()
        assert processes is not None
        broadcast = processes[1]
    else:
        def broadcast(value: str | None) -> str:
            box = [value]
            dist.broadcast_object_list(box, src=0)
            return str(box[0])
    if rank == 0:
        time.sleep(6)
    got = broadcast("work-dir" if rank == 0 else None)
    (out / f"rank{rank}.txt").write_text(got)
    # as the CLI ends under a launcher: without the interpreter's teardown, where a process
    # that imported DeepSpeed (quiet_deepspeed) aborted after its work ~1 in 6 times here
    from auditor.cli import leave_launch

    leave_launch(0)


if __name__ == "__main__":
    main()
