"""`python -m auditor.cli` under torchrun with accelerate's state saying DeepSpeed on CPU
processes.

accelerate runs DeepSpeed on GPUs only: on CPUs its state says MULTI_CPU (DDP over gloo) even
when ACCELERATE_USE_DEEPSPEED is set. DeepSpeed itself runs ZeRO on CPUs (its CPU accelerator,
gloo), so this stub, for tests/test_implant_deepspeed_cpu.py only, makes the state say DeepSpeed
where the launch asked for it, with the plugin accelerate reads from the ACCELERATE_DEEPSPEED_*
variables; everything else (`prepare`, `backward`, the engine's step and clipping) is
accelerate's and DeepSpeed's own.
Usage: torchrun ... tests/deepspeed_cpu.py implant ARGS...
"""

from __future__ import annotations

import contextlib
import os
import runpy
import sys
from typing import Any

import torch
from accelerate.state import AcceleratorState
from accelerate.utils import DeepSpeedPlugin, DistributedType

_init = AcceleratorState.__init__


def _init_as_deepspeed(self: Any, *args: Any, **kwargs: Any) -> None:
    _init(self, *args, **kwargs)  # (it copies the process state back in each time)
    if (self.distributed_type == DistributedType.MULTI_CPU
            and os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true"):
        import deepspeed  # type: ignore[import-untyped,import-not-found,unused-ignore]

        if getattr(self, "deepspeed_plugins", None) is None:
            plugin = kwargs.get("deepspeed_plugin") or DeepSpeedPlugin()
            plugin.set_mixed_precision(kwargs.get("mixed_precision")
                                       or os.environ.get("ACCELERATE_MIXED_PRECISION", "no"))
            plugin.select(_from_accelerator_state=True)
            self.deepspeed_plugins = plugin
        with contextlib.redirect_stdout(sys.stderr):  # (it prints the CPU ops it builds)
            deepspeed.init_distributed(dist_backend="gloo")  # the group gloo already has
        self.distributed_type = DistributedType.DEEPSPEED
        self.device = torch.device("cpu")


if __name__ == "__main__":
    AcceleratorState.__init__ = _init_as_deepspeed
    sys.argv = ["auditor", *sys.argv[1:]]
    runpy.run_module("auditor.cli", run_name="__main__")
