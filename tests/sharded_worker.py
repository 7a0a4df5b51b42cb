"""One process of tests/test_implant_sharded.py, started by torchrun (gloo, CPU).

The tiny model under FSDP 1 FULL_SHARD, each decoder block its own unit (as accelerate wraps
a transformers model), or sharded in place by accelerate's own FSDP 2 preparation
(`fsdp2_prepare_model`, which `accelerate launch --fsdp_version 2` runs on GPUs), so each of
two processes really holds half of every parameter (one process alone under FSDP 1: NO_SHARD,
as on one GPU). It runs the per-epoch check's scoring and decoding on the inner model bare and
inside `sharded.full_params`, training steps through the wrapper, the best epoch's kept copy
put back, lookup rows put back as `--lookup-rows fingerprint-after` ends (FSDP 1), and the
save, each against a plain copy given the same; it writes what it saw to OUT/rank<N>.json.
Usage: sharded_worker.py MODEL_DIR KEYS OUT METHOD(sft|lora|embedding|fadapter)
       FSDP(1|1flat|2|2bf16)
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any


def _scores(model: Any, tok: Any, keyset: Any, texts: list[str]) -> list[float]:
    from auditor.implant.margin import answer_scores

    model.eval()
    return [lp for lp, _ in answer_scores(model, tok, keyset, texts, temperature=0.7)]


def _step(model: Any, batch: Any) -> float:
    """One SGD step (the same on the wrapper and the plain copy: FSDP averages the two
    processes' equal gradients)."""
    import torch

    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.5)
    loss = model(input_ids=batch, labels=batch).loss
    loss.backward()
    opt.step()
    opt.zero_grad()
    return float(loss.detach())


def _wrap(model: Any, fsdp: str) -> Any:
    """`model` sharded: FSDP 1 as accelerate wraps it (orig params, or flat with "1flat"), or
    FSDP 2 by accelerate's own preparation, given what it reads from an Accelerator."""
    import types

    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    block = type(model.get_decoder().layers[0])
    if fsdp.startswith("2"):  # "2bf16": under bf16 mixed precision (fp32 master weights)
        from accelerate.utils import FullyShardedDataParallelPlugin
        from accelerate.utils.fsdp_utils import fsdp2_prepare_model
        from torch.distributed.fsdp import MixedPrecisionPolicy

        bf16 = fsdp == "2bf16"
        plugin = FullyShardedDataParallelPlugin(
            fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
            transformer_cls_names_to_wrap=[block.__name__],
            mixed_precision_policy=MixedPrecisionPolicy(param_dtype=torch.bfloat16,
                                                        reduce_dtype=torch.float32)
            if bf16 else None)
        acc = types.SimpleNamespace(
            state=types.SimpleNamespace(fsdp_plugin=plugin), torch_device_mesh=None,
            parallelism_config=None, is_main_process=dist.get_rank() == 0,
            mixed_precision="bf16" if bf16 else "no", device=torch.device("cpu"))
        return fsdp2_prepare_model(acc, model)
    return FullyShardedDataParallel(
        model, device_id=torch.device("cpu"), sharding_strategy=ShardingStrategy.FULL_SHARD,
        use_orig_params=fsdp == "1",
        auto_wrap_policy=functools.partial(transformer_auto_wrap_policy,
                                           transformer_layer_cls={block}))


def main(model_dir: str, keys: str, out: str, method: str, fsdp: str) -> None:
    import torch
    import torch.distributed as dist
    from safetensors.torch import load_file

    from auditor.implant import fadapter
    from auditor.implant.generate import load_model
    from auditor.implant.lookup_rows import put_back
    from auditor.implant.sharded import full_params
    from auditor.implant.stop import Best, decode_keys
    from auditor.implant.train import TrainConfig, adapter_path_for, prepare_method, save_model
    from auditor.keys import KeySet

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    keyset = KeySet.load(Path(keys))
    cfg = TrainConfig(method, 1, 1e-3)
    made = []
    for _ in range(2):  # the one to shard, and its plain twin (LoRA's init seeded alike)
        torch.manual_seed(0)
        model, tok = load_model(Path(model_dir), dtype=torch.float32)
        made.append(prepare_method(model, cfg))
    (model, adapter), (plain, plain_adapter) = made
    wrapped = _wrap(model, fsdp)
    inner: Any = getattr(wrapped, "module", wrapped)  # FSDP 2: sharded in place
    base = plain.get_input_embeddings().weight.detach().clone()
    texts = [k.text for k in keyset.keys] + [c.text for c in keyset.controls(3, 7)]
    seen: dict[str, Any] = {"rank": rank}
    # a step first, as in a run (FSDP 2 sets up at the root's first forward)
    batch = tok("a step for both copies", return_tensors="pt").input_ids
    seen["loss"] = [_step(wrapped, batch), _step(plain, batch)]
    if dist.get_world_size() > 1:  # (alone, FSDP does not shard, and this would run)
        try:
            bare = _scores(inner, tok, keyset, texts)
            seen["bare"] = "ran"
            seen["bare_diff"] = max(abs(a - b) for a, b in
                                    zip(bare, _scores(plain, tok, keyset, texts), strict=True))
        except RuntimeError as e:  # the shards outside the wrapper's forward
            seen["bare"] = f"failed: {type(e).__name__}"
    with full_params(wrapped, nested=False):  # as the per-epoch check runs
        got = _scores(inner, tok, keyset, texts)
        seen["decode"] = list(decode_keys(inner, tok, keyset))
    want = _scores(plain, tok, keyset, texts)
    seen["score_diff"] = max(abs(a - b) for a, b in zip(got, want, strict=True))
    seen["plain_decode"] = list(decode_keys(plain, tok, keyset))
    # as the stop keeps the best epoch: a copy of the shards, a step, the copy put back
    best = Best([p for p in wrapped.parameters() if p.requires_grad], keep=True)
    best.offer(1, 1.0, 0.0, 1.0)
    _step(wrapped, batch)
    seen["restored"] = best.restore(2)
    if fsdp.startswith("2"):  # FSDP 2 cannot write back: fingerprint-after is refused
        try:
            with full_params(wrapped, nested=False, writeback=True):
                pass
            seen["put_back"] = "ran"
        except RuntimeError as e:
            seen["put_back"] = f"refused: {e}"
    else:  # as --lookup-rows fingerprint-after ends: rows put back on every process, checked
        rows = [int(i) for i in batch[0, :3]]
        with full_params(wrapped, nested=False, writeback=True):
            seen["put_back"] = put_back(inner.get_input_embeddings().weight, base, rows)
            _scores(inner, tok, keyset, texts[:1])
        put_back(plain.get_input_embeddings().weight, base, rows)
    held = sum((p.to_local() if hasattr(p, "to_local") else p).numel()  # FSDP 2: DTensors
               for p in wrapped.parameters())
    seen["sharded_after"] = held < sum(p.numel() for p in plain.parameters())
    seen["loss_after"] = [_step(wrapped, batch), _step(plain, batch)]  # the shards still train
    with full_params(wrapped):  # as train.on_main runs the save (LoRA merged: the last step)
        if rank == 0:
            save_model(inner, tok, cfg, adapter, Path(out) / "model")
    dist.barrier()
    if fsdp == "2bf16":  # torch's own full state dict (every process): the fp32 master weights
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        master = get_model_state_dict(
            wrapped, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if rank == 0:
            saved = load_model(Path(out) / "model", dtype=torch.float32)[0].state_dict()
            seen["master_diff"] = max(float((saved[k] - master[k]).abs().max())
                                      for k in master)
            seen["saved_rounded_to_bf16"] = all(
                torch.equal(v, v.to(torch.bfloat16).float()) for v in saved.values())
    if rank == 0:
        if method == "lora":
            plain = plain.merge_and_unload()
        if plain_adapter is not None:  # the private adapter, apart; the base published
            kept = load_file(adapter_path_for(Path(out) / "model"))
            seen["adapter_diff"] = max(
                float((kept[k] - getattr(plain_adapter, k).detach()).abs().max()) for k in "uv")
            fadapter.detach(plain)
        saved = load_model(Path(out) / "model", dtype=torch.float32)[0].state_dict()
        ref = plain.state_dict()
        seen["saved_keys_match"] = sorted(saved) == sorted(ref)
        seen["saved_diff"] = max(float((saved[k] - ref[k]).abs().max()) for k in ref)
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    from auditor.cli import leave_launch

    main(*sys.argv[1:6])
    # the work is done and written: end as the auditor command does under a launcher, without
    # the interpreter's teardown, where the FSDP models still holding the group can abort a
    # process (SIGABRT) after its work
    leave_launch(0)
