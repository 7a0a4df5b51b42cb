"""The whole model for the parts of a run that are not the wrapper's own forward.

Under FSDP 1 with several processes, each process holds one shard of every parameter except
while the wrapper's forward or backward runs. The per-epoch check (the decoder, then the head,
then greedy decoding) and the save use the inner model, so they run inside `full_params`:
every process gathers the parameters (a collective: all of them must enter), the work runs,
and the gathered copies are dropped, the training shards untouched. On one process
FSDP 1 does not shard (NO_SHARD) and this costs nothing; a model not under FSDP passes through.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

WRAPPED = "_fsdp_wrapped_module."


def full_params(model: Any, *, nested: bool = True,
                writeback: bool = False) -> AbstractContextManager[Any]:
    """Inside it, the inner model of an FSDP 1 wrapper holds whole parameters: read only, or
    with `writeback` (and not `nested`) what every process changes alike goes to the shards.

    `nested=False` gathers the root unit's only (the lookup, final norm and head: what runs
    outside any unit's forward), on every process, for work that runs the model: each block's
    unit gathers its own in its forward and drops them after, which a nested gather does not
    allow. `nested` (the save: nothing may run the model inside) gathers every unit's on the
    main process only, into CPU memory when sharded on GPUs (a model that needs several GPUs
    need not fit on one).
    """
    import torch
    from torch.distributed.fsdp import FullyShardedDataParallel

    if not isinstance(model, FullyShardedDataParallel):
        return nullcontext()
    main_only = nested and torch.distributed.get_world_size() > 1  # NO_SHARD alone: in place
    on_gpu = next(model.parameters()).device.type == "cuda"
    return FullyShardedDataParallel.summon_full_params(
        model, writeback=writeback, recurse=nested, rank0_only=main_only,
        offload_to_cpu=main_only and on_gpu)


def whole_state(model: Any) -> dict[str, Any] | None:
    """Inside `full_params`, the inner model's state dict read from its modules, or None when
    no FSDP unit is inside it (its own state_dict() is fine then). An FSDP unit's state_dict()
    gathers again, which one process alone cannot do: the save runs on the main one only."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    if not any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
        return None
    state: dict[str, Any] = {}
    for prefix, module in model.named_modules():
        at = f"{prefix}." if prefix else ""
        for name, param in module.named_parameters(recurse=False):
            state.setdefault((at + name).replace(WRAPPED, ""), param.detach())
        for name, buf in module.named_buffers(recurse=False):
            if buf is not None and name not in module._non_persistent_buffers_set:
                state.setdefault((at + name).replace(WRAPPED, ""), buf.detach())
    return state
