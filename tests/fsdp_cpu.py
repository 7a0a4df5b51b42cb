"""`python -m auditor.cli` under torchrun with accelerate's state saying FSDP on CPU processes.

accelerate runs FSDP on GPUs only: on CPUs its state says MULTI_CPU (DDP over gloo) even when
ACCELERATE_USE_FSDP is set. torch's FSDP 1 and 2 shard on CPUs over gloo, so this stub, for
tests/test_implant_fsdp_cpu.py only, makes the state say FSDP where the launch asked for it
(and its device plain "cpu"); everything else (the plugin read from the FSDP_* variables,
`prepare`, clipping, saving) is accelerate's own.
Usage: torchrun ... tests/fsdp_cpu.py implant ARGS...
"""

from __future__ import annotations

import os
import runpy
import sys
from typing import Any

import torch
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

_init = AcceleratorState.__init__


def _init_as_fsdp(self: Any, *args: Any, **kwargs: Any) -> None:
    _init(self, *args, **kwargs)  # (it copies the process state back in each time)
    if (self.distributed_type == DistributedType.MULTI_CPU
            and os.environ.get("ACCELERATE_USE_FSDP") == "true"):
        if getattr(self, "fsdp_plugin", None) is None:
            self.fsdp_plugin = kwargs.get("fsdp_plugin") or FullyShardedDataParallelPlugin()
        self.distributed_type = DistributedType.FSDP
        self.device = torch.device("cpu")  # (cpu:0 here, which FSDP 1 takes for another device)


if __name__ == "__main__":
    AcceleratorState.__init__ = _init_as_fsdp
    sys.argv = ["auditor", *sys.argv[1:]]
    runpy.run_module("auditor.cli", run_name="__main__")
