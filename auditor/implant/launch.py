"""Refuse a multi-process launch that accelerate does not make distributed.

`torchrun --nproc_per_node 2` on a machine without GPUs, or `accelerate launch` with an FSDP or
DeepSpeed config there, starts two processes that accelerate each sets up as a lone,
non-distributed run: each would train on every row and write the same --out at the same time.
accelerate's FSDP and DeepSpeed run on GPUs only; on CPUs the distributed path is its
multi-CPU one (ACCELERATE_USE_CPU=true under torchrun: DDP over gloo).
"""

from __future__ import annotations

import os

from auditor.errors import UserError


def launched_processes() -> int:
    """How many processes the launcher says it started (1 without a launcher)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def refuse_lone_processes() -> None:
    """Fail before any work when a launcher started several processes but accelerate set up
    no distributed run for them."""
    wanted = launched_processes()
    if wanted == 1:
        return
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    # the flag as the Accelerator reads it: this state is the one it will share
    if PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU")).num_processes == wanted:
        return
    if os.environ.get("RANK", "0") != "0":  # the same exit, one message: rank 0 says it
        raise SystemExit(2)
    raise UserError(
        f"started as {wanted} processes, but accelerate set up no distributed run for them: "
        "each would train alone and write the same --out. On CPUs run ACCELERATE_USE_CPU=true "
        f"torchrun --standalone --nproc_per_node {wanted} -m auditor.cli ... (accelerate's "
        "FSDP and DeepSpeed need GPUs)"
    )
