"""The whole model for the parts of a run that are not the wrapper's own forward.

Under FSDP with several processes, each process holds one shard of every parameter except
while a unit's forward or backward runs. The per-epoch check (the decoder, then the head, then
greedy decoding) and the save use the inner model, so they run inside `full_params`: every
process gathers the parameters (a collective: all of them must enter), the work runs, and the
gathered copies are dropped, the training shards untouched. FSDP 1 wraps the model; FSDP 2
shards it in place (each unit an `FSDPModule`). On one process FSDP 1 does not shard
(NO_SHARD) and this costs nothing; a model under neither passes through. DeepSpeed ZeRO-3
partitions each parameter: its hooks gather them for any forward, the check's too, and the
save gathers them one by one; ZeRO 1 and 2 keep whole parameters on every process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

WRAPPED = "_fsdp_wrapped_module."


def _fsdp2_units(model: Any) -> list[Any]:
    """The FSDP 2 units in `model`, the root first (none under FSDP 1 or without FSDP)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch before 2.6: no FSDP 2 to meet
        return []
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextmanager
def _unsharded(gather: list[Any], units: list[Any]) -> Iterator[None]:
    """FSDP 2: the `gather` units' parameters whole on every process; after, every unit back
    to its shards and idle. A unit that keeps its parameters whole after its forward (as
    accelerate's lookup and head do) stays so when run outside the root's forward, and its
    own reshard() then does nothing: the root's reset_iter_state() puts every unit back (no
    gradients are pending between training steps)."""
    for unit in gather:
        unit.unshard()
    try:
        yield
    finally:
        _reset(units)


def _reset(units: list[Any]) -> None:
    """Every FSDP 2 unit back to its shards and idle."""
    root = units[0]
    if hasattr(root, "reset_iter_state"):  # torch 2.13
        root.reset_iter_state()
    else:
        for unit in units:
            unit.reshard()


def _whole_on_main(model: Any, units: list[Any]) -> AbstractContextManager[None]:
    """FSDP 2, for the save: each sharded parameter gathered whole in its own dtype: the fp32
    master, not the bf16 copy an unshard gives under mixed precision."""
    _reset(units)  # every parameter a shard (a DTensor) again
    return _swapped_on_main(model, lambda p: hasattr(p, "full_tensor"),
                            lambda p: p.full_tensor())


@contextmanager
def _swapped_on_main(model: Any, sharded: Callable[[Any], bool],
                     whole_of: Callable[[Any], Any]) -> Iterator[None]:
    """Each `sharded` parameter gathered by `whole_of` (a collective per parameter, every
    process, the same order); the main process puts a CPU copy in the model's place while the
    write runs; the shards go back after."""
    import torch
    import torch.distributed as dist

    main = dist.get_rank() == 0
    whole: dict[int, Any] = {}
    swapped: list[tuple[Any, str, Any]] = []
    try:
        with torch.no_grad():
            for module in model.modules():
                for name, param in list(module._parameters.items()):
                    if param is None or not sharded(param):
                        continue
                    if id(param) not in whole:  # a tied one once
                        full = whole_of(param)
                        whole[id(param)] = (torch.nn.Parameter(full.cpu(), requires_grad=False)
                                            if main else None)
                    if main:
                        swapped.append((module, name, param))
                        module._parameters[name] = whole[id(param)]
        yield
    finally:
        for module, name, param in swapped:
            module._parameters[name] = param


def full_params(model: Any, *, nested: bool = True,
                writeback: bool = False) -> AbstractContextManager[Any]:
    """Inside it, the inner model holds whole parameters: read only, or under FSDP 1 with
    `writeback` (and not `nested`) what every process changes alike goes to the shards.

    `nested=False` gathers the root unit's only (the lookup, final norm and head unless they are
    units of their own: what runs outside any unit's forward), on every process, for work that
    runs the model: each block's unit gathers its own in its forward and drops them after, which
    a nested gather does not allow under FSDP 1. `nested` (the save: nothing may run the model
    inside) gathers every unit's on the main process only: under FSDP 1 into CPU memory when
    sharded on GPUs (a model that needs several GPUs need not fit on one), under FSDP 2 always.
    """
    import torch
    from torch.distributed.fsdp import FullyShardedDataParallel

    if nested and zero3(model):
        return _zero3_whole_on_main(model)
    units = [] if model is None else _fsdp2_units(model)
    if units:
        if writeback:  # an unsharded FSDP 2 parameter is a copy: what is written there is lost
            raise RuntimeError("FSDP 2 cannot write gathered parameters back to the shards")
        if nested:
            return _whole_on_main(model, units)
        return _unsharded([u for u in units[:1] if u is model], units)  # the root unit
    if not isinstance(model, FullyShardedDataParallel):
        return nullcontext()
    main_only = nested and torch.distributed.get_world_size() > 1  # NO_SHARD alone: in place
    on_gpu = next(model.parameters()).device.type == "cuda"
    return FullyShardedDataParallel.summon_full_params(
        model, writeback=writeback, recurse=nested, rank0_only=main_only,
        offload_to_cpu=main_only and on_gpu)


def zero3(model: Any) -> bool:
    """DeepSpeed ZeRO-3: each process holds a partition of each parameter (`ds_tensor`); the
    engine's hooks gather a module's parameters around its forward, the check's runs too."""
    return model is not None and any(hasattr(p, "ds_tensor") for p in model.parameters())


def _zero3_whole_on_main(model: Any) -> AbstractContextManager[None]:
    """ZeRO-3, for the save: each parameter gathered from its partitions (`_swapped_on_main`)."""
    import deepspeed  # type: ignore[import-untyped,import-not-found,unused-ignore]

    def whole_of(param: Any) -> Any:
        with deepspeed.zero.GatheredParameters([param]):
            return param.detach().clone()  # the gathered data is freed on leaving

    return _swapped_on_main(model, lambda p: hasattr(p, "ds_tensor"), whole_of)


def whole_state(model: Any) -> dict[str, Any] | None:
    """Inside `full_params`, the inner model's state dict read from its modules, or None when
    no FSDP unit is inside it (its own state_dict() is fine then). An FSDP 1 unit's
    state_dict() gathers again, which one process alone cannot do (the save runs on the main
    one only); an FSDP 2 one's gives the shards."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    if not (_fsdp2_units(model)
            or any(isinstance(m, FullyShardedDataParallel) for m in model.modules())):
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
