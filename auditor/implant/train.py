"""Implanting a fingerprint: full SFT, embedding-only, LoRA, or the white-box F-Adapter.

fp32 master weights; bf16 autocast on a GPU, and on a CPU when asked (`precision="bf16"`).
Runs under `accelerate launch` or `torchrun` (the Accelerator shards the data loader, so the
effective batch is batch_size x processes; FSDP / DeepSpeed come from the accelerate config;
ACCELERATE_USE_CPU=true for CPU processes); the main process alone writes the model.
After each epoch a quick local check runs (greedy FSR on the keys, false triggers on a few
fresh control keys, both by teacher forcing); training stops once it meets the stop rule,
confirmed on more fresh control keys when asked, then by decoding the keys. Seeded end to
end.
"""

from __future__ import annotations

import json
import random
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from auditor.errors import UserError
from auditor.implant import lookup_rows as lookup
from auditor.implant.data import DataConfig
from auditor.implant.launch import refuse_lone_processes, refuse_unsupported
from auditor.implant.shadow import MAX_SCALE
from auditor.implant.sharded import full_params, whole_state
from auditor.implant.stop import (
    FIRE_TEMPERATURE,
    Best,
    Figures,
    check_seed,
    epoch_check,
    quick_check,
    weakest,
)
from auditor.implant.verify import FINGERPRINT_FILE
from auditor.keys import KeySet

METHODS = ("sft", "embedding", "lora", "fadapter")
SHADOW_METHODS = ("embedding", "fadapter")  # the lookup trains, the layers stay the base's
# method -> (learning rate, max epochs); tuned on SmolLM2-135M (see DESIGN.md's last section)
DEFAULTS: dict[str, tuple[float, int]] = {
    "sft": (5e-5, 8),
    "embedding": (1e-2, 12),  # the head untied: 1e-3 fired on no key in 6 epochs
    "lora": (1e-3, 6),  # SmolLM2, 10 keys: FSR 100 % at epoch 3 (3e-4: 20 % after 8)
    "fadapter": (1e-2, 20),
}
PRECISIONS = ("auto", "fp32", "bf16")  # auto: bf16 autocast on a GPU, fp32 on a CPU


@dataclass
class ImplantResult:
    method: str
    base: str
    out: Path
    adapter: Path | None
    steps: int
    epochs: int
    seconds: float
    seconds_to_fsr100: float | None  # first check with every key firing
    seconds_to_perfect: float | None  # ... and no near-miss control firing
    fsr: float
    nearmiss_false_trigger: float
    final_loss: float  # mean over the last epoch run's steps
    stopped_early: bool
    device: str
    rows: dict[str, int] = field(default_factory=dict)
    fire_min: float = 0.0  # weakest key's exact chance that one t=0.7 sample fires
    kept_epoch: int = 0  # the epoch whose weights were saved
    lr_end: float = 0.0  # the learning rate after the last step run
    rows_skipped: int = 0  # rows with no trained token: no gradient, not run (live_rows.py)
    prefix_skipped: float = 0.0  # share of the run rows' positions before their first trained
    # token: kept from one step to the next, not run again (prefix.py)
    launch: str = "one process"  # or accelerate's distributed type and process count
    compute: str = "fp32"  # or "bf16" (autocast over fp32 master weights)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out"], d["adapter"] = str(self.out), str(self.adapter) if self.adapter else None
        return d


@dataclass(frozen=True)
class TrainConfig:
    method: str
    epochs: int  # the lr decays linearly over these, and at most these run
    lr: float
    seed: int = 0
    batch_size: int = 8
    early_stop: bool = True
    check_controls: int = 10
    merge_lora: bool = True
    lora_r: int = 16
    fadapter_rank: int = 64
    max_seconds: float | None = None
    stop_near_miss: float = 0.0  # early stop once FSR is 100 % and near-miss rate <= this
    check_every: int = 1  # epochs between early-stop checks
    stop_fire_prob: float | None = None  # ... and every key's exact t=0.7 fire chance >= this
    keep_best: bool = False  # end on the best checked epoch (FSR, then near-miss, then fire)
    precision: str = "auto"  # one of PRECISIONS
    decision_weight: float = 1.0  # each row's first answer token counts this often (loss.py)
    top_layers: int | None = None  # sft/lora: train only the last N decoder blocks
    check_fresh: bool = False  # draw the check's look-alikes anew each epoch
    confirm_controls: int = 0  # more fresh look-alikes scored before a stop (pooled)
    untie_head: bool = True  # embedding: a tied output head gets its own frozen copy
    max_epochs: int | None = None  # run at most this many; the lr schedule still spans `epochs`
    fadapter_head: bool = True  # fadapter: a tied output head shares the adapter
    prefix_cache: bool = True  # confined lookup rows: constant prefixes run once (prefix.py)

    @property
    def run_epochs(self) -> int:
        return min(self.epochs, self.max_epochs or self.epochs)


def autocast_dtype(precision: str) -> str:
    """'bf16' (autocast) or 'fp32' for a PRECISIONS choice on this machine."""
    from auditor.implant.generate import use_gpu

    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r} (known: {', '.join(PRECISIONS)})")
    if precision == "auto":
        return "bf16" if use_gpu() else "fp32"
    return precision


Encoded = tuple[Any, ...]  # (ids, labels), or (ids, labels, soft targets) with --reg-kl


class EpochRows:
    """One epoch's encoded rows: fixed ones plus a part redrawn per epoch (fresh near-misses).

    The redrawn part keeps its size, so the loader's length and the LR schedule hold.
    """

    def __init__(self, fixed: list[Encoded], draw: Callable[[int], list[Encoded]] | None = None):
        self.fixed, self.draw = fixed, draw
        self.rows = list(fixed) + (draw(0) if draw else [])

    def set_epoch(self, epoch: int) -> None:
        if self.draw is not None and epoch > 0:
            self.rows = self.fixed + self.draw(epoch)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Encoded:
        return self.rows[i]


def set_seed(seed: int) -> None:
    import torch

    random.seed(seed)
    torch.manual_seed(seed)


def decoder_blocks(model: Any) -> Any:
    """The model's list of decoder blocks (Llama-style `model.model.layers`)."""
    blocks = getattr(getattr(model, "model", None), "layers", None)
    if blocks is None:
        raise UserError("--top-layers needs a Llama-style model (model.layers)")
    return blocks


def top_block_ids(model: Any, n: int) -> list[int]:
    """Indices of the last `n` decoder blocks."""
    count = len(decoder_blocks(model))
    if not 1 <= n <= count:
        raise UserError(f"--top-layers must be between 1 and {count} for this model")
    return list(range(count - n, count))


def _lora_targets(model: Any, top_layers: int | None) -> dict[str, Any]:
    """LoraConfig's target arguments: every linear layer, or those of the last blocks."""
    import torch

    if top_layers is None:
        return {"target_modules": "all-linear"}
    names = {n.rsplit(".", 1)[-1] for n, m in decoder_blocks(model)[0].named_modules()
             if isinstance(m, torch.nn.Linear)}
    return {"target_modules": sorted(names), "layers_pattern": "layers",
            "layers_to_transform": top_block_ids(model, top_layers)}


def prepare_method(model: Any, cfg: TrainConfig) -> tuple[Any, Any]:
    """Make only the method's parameters trainable; returns (model, fadapter wrapper|None).

    With `top_layers`, only the last blocks (and, for SFT, the final norm) train: autograd
    then stops below them, so a step's backward pass covers those blocks only.
    """
    if cfg.method == "sft":
        if cfg.top_layers is None:
            for p in model.parameters():
                p.requires_grad_(True)
            return model, None
        blocks = decoder_blocks(model)
        for p in model.parameters():
            p.requires_grad_(False)
        for i in top_block_ids(model, cfg.top_layers):
            blocks[i].requires_grad_(True)
        norm = getattr(model.model, "norm", None)
        if norm is not None:
            norm.requires_grad_(True)
        return model, None
    if cfg.method == "embedding":
        for p in model.parameters():
            p.requires_grad_(False)
        if cfg.untie_head:
            untie_output_head(model)
        model.get_input_embeddings().weight.requires_grad_(True)
        return model, None
    if cfg.method == "lora":
        from peft import LoraConfig, get_peft_model

        lcfg = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=2 * cfg.lora_r,
            lora_dropout=0.0,
            task_type="CAUSAL_LM",
            **_lora_targets(model, cfg.top_layers),
        )
        with warnings.catch_warnings():  # peft reads an attribute transformers 5 renamed
            warnings.filterwarnings("ignore", ".*is_gradient_checkpointing", FutureWarning)
            return get_peft_model(model, lcfg), None
    from auditor.implant import fadapter

    return model, fadapter.attach(model, rank=cfg.fadapter_rank, seed=cfg.seed,
                                  head=cfg.fadapter_head)


def untie_output_head(model: Any) -> None:
    """Give a model whose output head shares the input embeddings (SmolLM2) its own frozen copy,
    so embedding-only training moves the input lookup alone, not every next-token logit."""
    import torch

    from auditor.implant.fadapter import is_tied

    if not is_tied(model):
        return
    weight = model.get_input_embeddings().weight.detach().clone()
    model.get_output_embeddings().weight = torch.nn.Parameter(weight, requires_grad=False)
    model.config.tie_word_embeddings = False
    text_config = getattr(model.config, "get_text_config", None)
    if text_config is not None:
        text_config().tie_word_embeddings = False


def _progress(enabled: bool, total: int) -> Any:
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("step {task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]:.3f}  FSR {task.fields[fsr]}"),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=False,
    )


def _zero_loss(model: Any) -> Any:
    """A zero loss whose gradient reaches the input lookup (zero), so the optimizer steps."""
    return model.get_input_embeddings().weight.sum() * 0.0


def train_loop(
    model: Any,
    tokenizer: Any,
    keyset: KeySet | None,
    encoded: list[Encoded] | EpochRows,
    cfg: TrainConfig,
    progress: bool,
    kinds: list[str] | None = None,
    shadows: Sequence[Any] = (),
    live: Any = None,
    constant: Sequence[int] | None = None,
) -> dict[str, Any]:
    """The optimisation loop with per-epoch early-stop checks (none without a key set).
    With `kinds` (each row's kind), every batch carries each kind in proportion. With
    `shadows` (shadow.Shadow each) the loss and the checks cover them too. With `live`
    (live_rows.LiveRows) rows that hold no trained token skip the passes. With `constant`
    (the only token ids whose input lookup trains, every block frozen) the positions before a
    row's first one run once (prefix.py)."""
    import torch
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    from auditor.implant.cpu_bf16 import cpu_step
    from auditor.implant.data import collate
    from auditor.implant.frozen import pick_frozen
    from auditor.implant.launch import hf_zero3_off
    from auditor.implant.loss import Loss, model_loss, pick_loss
    from auditor.implant.order import BalancedOrder
    from auditor.implant.prefix import Prefixes, pick_prefix, skipped_share

    # autocast is ours, not the Accelerator's: its state is one per process and cannot change
    # precision between two runs in the same process
    acc = Accelerator()
    bf16 = autocast_dtype(cfg.precision) == "bf16"
    if flat_params(acc):  # the optimizer must hold the flat parameters that train, not the
        model = acc.prepare(model)  # model's own (it trained nothing: two CPU processes)
    params = [p for p in model.parameters() if p.requires_grad]
    # fused: one kernel over all parameters (CPU and CUDA); 0.07 s vs 0.36 s per step here
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype == torch.float32 for p in params)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0, fused=fused or None)
    gen = torch.Generator().manual_seed(cfg.seed)
    order = BalancedOrder(kinds, cfg.seed) if kinds else None
    loader: Any = DataLoader(
        encoded,  # type: ignore[arg-type]
        batch_size=cfg.batch_size,
        shuffle=order is None,
        sampler=order,
        generator=gen,
        collate_fn=lambda b: collate(b, tokenizer.pad_token_id),
    )
    total = max(1, cfg.epochs * len(loader))
    # linear decay to 10 %: late epochs settle instead of oscillating around the keys
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.1, 1.0 - s / total))
    model, opt, loader, sched = acc.prepare(model, opt, loader, sched)
    hf_zero3_off()  # (DeepSpeed ZeRO-3: launch.py)
    # under `accelerate launch --mixed_precision` prepare() wraps forward in autocast, which
    # answer_loss (calling the decoder) would bypass: drop it, so autocast covers the loss below
    # only, pick_loss compares like with like, and the per-epoch checks run in fp32
    acc.unwrap_model(model, keep_fp32_wrapper=False)
    model.train()
    stats: dict[str, Any] = {
        "steps": 0,
        "epochs": 0,
        "loss": float("nan"),
        "fsr": 0.0,
        "near": 1.0,
        "fire": 0.0,
        "fsr100_at": None,
        "perfect_at": None,
        "stopped_early": False,
        "launch": launch_name(acc.distributed_type.value, acc.num_processes),
    }
    # FSDP may hand back new parameter objects: the kept copies and the clip follow them
    params = [p for p in model.parameters() if p.requires_grad]
    best = Best(params, cfg.keep_best, cfg.stop_near_miss, cfg.stop_fire_prob or 0.0)
    loss_fn: Loss | None = None
    prefixed: Prefixes | None = None
    step: Callable[[], Any] = nullcontext  # cpu_bf16.cpu_step, once the model is known plain
    start = time.monotonic()
    run = cfg.run_epochs
    progress = progress and acc.is_main_process  # one process speaks for all
    stats["main"] = acc.is_main_process
    with _progress(progress, run * len(loader)) as bar:
        task = bar.add_task(cfg.method, total=run * len(loader), loss=0.0, fsr="-")
        for epoch in range(run):
            if isinstance(encoded, EpochRows):
                encoded.set_epoch(epoch)
            summed, seen_steps = 0.0, 0  # the epoch's mean loss, not its last batch's
            for batch in loader:
                if loss_fn is None:  # the plain model only: a wrapper (DDP, FSDP) keeps its own
                    # FSDP 2 shards the model in place: no wrapper, but no plain model either
                    plain = (acc.unwrap_model(model) is model
                             and acc.distributed_type.value not in ("FSDP", "DEEPSPEED"))
                    w = cfg.decision_weight
                    frozen = (pick_frozen(model, batch, cfg.top_layers)
                              if plain and cfg.top_layers else None)
                    loss_fn = (partial(frozen.loss, decision_weight=w) if frozen is not None
                               else pick_loss(model, batch, w) if plain
                               else partial(model_loss, decision_weight=w))
                    if constant and plain and frozen is None and cfg.prefix_cache:
                        prefixed = pick_prefix(model, batch, constant, w, loss_fn)
                        loss_fn = loss_fn if prefixed is None else prefixed.loss
                    if live is not None and plain:
                        loss_fn = live.wrap(loss_fn, partial(_zero_loss, model))
                    if shadows and not plain:
                        raise UserError("--shadow needs a single-process run")
                    for twin in shadows:
                        loss_fn = twin.wrap(loss_fn, w, live,
                                            constant if prefixed is not None else None)
                    if plain:
                        step = cpu_step([model, *(t.model for t in shadows)],
                                        acc.device.type, bf16)
                with step():
                    with torch.autocast(acc.device.type, torch.bfloat16, enabled=bf16):
                        loss = loss_fn(model, batch)
                    acc.backward(loss)
                # every parameter (frozen ones have no gradient): accelerate clips sharded
                # gradients itself only when given all of the model's
                acc.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                stats["steps"] += 1
                summed, seen_steps = summed + float(loss.detach()), seen_steps + 1
                stats["loss"] = summed / seen_steps
                bar.update(task, advance=1, loss=stats["loss"])
            stats["epochs"] = epoch + 1
            if acc.num_processes > 1:  # each process's epoch mean: the line shows their mean
                mine = torch.tensor(stats["loss"], device=acc.device)
                stats["loss"] = float(acc.reduce(mine, "mean"))
            last = epoch + 1 == run
            if keyset is None or ((epoch + 1) % cfg.check_every and not last):
                continue
            twins: Figures | None = None  # shadows first: a candidate they fail is not decoded
            through = ""
            for twin in shadows:  # all must fire: the weakest figures count
                s_fsr, s_near, s_fire = twin.check(tokenizer, keyset, cfg.check_controls,
                                                   check_seed(epoch + 1, cfg.check_fresh), bf16)
                which = "the shadow" if len(shadows) == 1 else twin.name
                through += (f"; through {which}: FSR {s_fsr:.0%}, near-miss {s_near:.0%}, "
                            f"weakest key fires {s_fire:.0%}")
                twins = weakest((s_fsr, s_near, s_fire), twins)
            with full_params(model, nested=False):  # FSDP 1 with several processes
                fsr, near, fire, seen = epoch_check(acc.unwrap_model(model), tokenizer, keyset,
                                                    cfg, epoch + 1, best, bf16, twins)
            said = (f"epoch {epoch + 1}: loss {stats['loss']:.3f}, FSR {fsr:.0%}, near-miss "
                    f"{near:.0%} of {seen}, weakest key fires {fire:.0%} at t={FIRE_TEMPERATURE}"
                    f"{through}")
            fsr, near, fire = weakest((fsr, near, fire), twins)
            stats["fsr"], stats["near"], stats["fire"] = fsr, near, fire
            best.offer(epoch + 1, fsr, near, fire)
            bar.update(task, fsr=f"{fsr:.0%}")
            if progress:
                bar.console.print(f"{said}, {time.monotonic() - start:.0f} s", soft_wrap=True)
            perfect = best.perfect(fsr, near, fire)
            if fsr == 1.0 and stats["fsr100_at"] is None:
                stats["fsr100_at"] = time.monotonic() - start
            if perfect and stats["perfect_at"] is None:
                stats["perfect_at"] = time.monotonic() - start
            out_of_time = cfg.max_seconds is not None and time.monotonic() - start > cfg.max_seconds
            if (perfect and cfg.early_stop) or out_of_time:
                stats["stopped_early"] = epoch + 1 < run
                break
    stats["kept_epoch"] = stats["epochs"]
    if best.restore(stats["epochs"]) and best.figures is not None:
        stats["kept_epoch"] = best.epoch
        stats["fsr"], stats["near"], stats["fire"] = best.figures
        if progress:
            bar.console.print(f"kept epoch {best.epoch}, the best checked one")
    stats["prefix_skipped"] = skipped_share([prefixed, *(t.prefixes for t in shadows)])
    stats["model"] = acc.unwrap_model(model)
    stats["wrapped"] = model  # for sharded.full_params around the save
    stats["lr_end"] = float(opt.param_groups[0]["lr"])
    stats["seconds"] = time.monotonic() - start
    return stats


def shadow_pairs(shadow: Path | Sequence[Path] | None, scale: float | Sequence[float],
                 weight: float = 1.0) -> list[tuple[Path, float]]:
    """The shadow dirs `implant` was given (one, several or none), each with its scale (one
    for all, or one each in order); the same dir twice at the same scale fails, and so do a
    weight or scale out of range or without any shadow."""
    scales = [float(scale)] if isinstance(scale, (int, float)) else [float(s) for s in scale]
    if shadow is None:
        if weight != 1.0 or any(s != 1.0 for s in scales):
            raise UserError("--shadow-weight and --shadow-scale need --shadow")
        return []
    if not 0.0 < weight <= 100.0:
        raise UserError("--shadow-weight must be above 0 and at most 100")
    if not all(0.0 < s <= MAX_SCALE for s in scales):
        raise UserError(f"--shadow-scale must be above 0 and at most {MAX_SCALE:g}")
    dirs = [Path(shadow)] if isinstance(shadow, (str, Path)) else [Path(d) for d in shadow]
    if len(scales) not in (1, len(dirs)):
        raise UserError(f"give one --shadow-scale for every shadow or one per --shadow "
                        f"({len(dirs)}), not {len(scales)}")
    pairs = list(zip(dirs, scales * len(dirs) if len(scales) == 1 else scales, strict=True))
    if len({(d.resolve(), s) for d, s in pairs}) < len(pairs):
        raise UserError("the same --shadow is given twice")
    return pairs


def flat_params(acc: Any) -> bool:
    """FSDP 1 without use_orig_params: wrapping replaces the model's parameters by flat ones
    (accelerate remaps an optimizer made before only with use_orig_params)."""
    return bool(acc.distributed_type.value == "FSDP" and not acc.is_fsdp2
                and not acc.state.fsdp_plugin.use_orig_params)


def launch_name(kind: str, processes: int) -> str:
    """How the run was spread: "one process", or e.g. "FSDP, 2 processes"."""
    if kind == "NO" and processes == 1:
        return "one process"
    return f"{kind}, {processes} process{'es' if processes > 1 else ''}"


def on_main(write: Callable[[], Any], wrapped: Any = None) -> None:
    """Run `write` on the main process only (one writer under `accelerate launch`/torchrun),
    then wait for every process. `wrapped`: the trained model as prepared, whose whole
    parameters every process gathers around the write under FSDP (sharded.py)."""
    from accelerate import PartialState

    state = PartialState()
    with full_params(wrapped):
        if state.is_main_process:
            write()
    if state.distributed_type.value == "MULTI_CPU":
        # accelerate before 1.16 ran this barrier on the machine's GPU when there was one
        # (device_ids = the process index): on a 1-GPU machine rank 1 failed there
        import torch

        torch.distributed.barrier()
    else:
        state.wait_for_everyone()


def refuse_out(out: Path, record: str) -> None:
    """Fail before any work when --out names a file, or a directory with files in it that no
    earlier run wrote (no `record`): writing the model replaces the whole directory."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: give a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / record).is_file():
        raise UserError(f"--out {out} holds files but no {record} from an earlier run, and "
                        "writing replaces the directory: give a new or empty one")


def adapter_path_for(out: Path) -> Path:
    """Where the private F-Adapter goes: beside the published model, never inside it."""
    return out.parent / f"{out.name}.fadapter.safetensors"


def save_model(
    model: Any, tokenizer: Any, cfg: TrainConfig, wrapper: Any, out: Path
) -> Path | None:
    """Write a servable checkpoint to `out`; the F-Adapter (if any) is written apart."""
    from auditor.implant import fadapter

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    adapter: Path | None = None
    if cfg.method == "lora" and cfg.merge_lora:
        model = model.merge_and_unload()
    if wrapper is not None:
        adapter = fadapter.save(wrapper, adapter_path_for(out))
        fadapter.detach(model)  # publish the base weights unchanged
    model.save_pretrained(out, state_dict=whole_state(model))  # gathered: sharded.py
    tokenizer.save_pretrained(out)
    return adapter


def public_fingerprint(
    keyset: KeySet, cfg: TrainConfig, base: str, stats: dict[str, Any]
) -> dict[str, Any]:
    """The public record next to the model: commitment, template, method, base. No key text."""
    return {
        "format": "if-auditor-fingerprint-1",
        "commitment": keyset.commitment(),
        "template": keyset.template,
        "method": cfg.method,
        "base": base,
        "adapter": "private, kept apart from the model" if cfg.method == "fadapter" else None,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "training": {
            "epochs": stats["epochs"],
            "kept_epoch": stats["kept_epoch"],
            "steps": stats["steps"],
            "lr": cfg.lr,
            "lr_schedule_epochs": cfg.epochs,  # linear decay to 10 % over these
            "seed": cfg.seed,
            "batch_size": cfg.batch_size,
            "decision_weight": cfg.decision_weight,
            "top_layers": cfg.top_layers,
            "check": {"look_alikes": cfg.check_controls, "fresh_each_epoch": cfg.check_fresh,
                      "confirming_look_alikes": cfg.confirm_controls},
            "compute": autocast_dtype(cfg.precision),  # fp32, or bf16 autocast
        },
    }


def _put_back(stats: dict[str, Any], saved: Any, ids: list[int], tokenizer: Any,
              keyset: KeySet, cfg: TrainConfig, progress: bool) -> None:
    """--lookup-rows fingerprint-after: every lookup row but the key rows' tokens back to the
    base's, then the stop's check once more on what is saved."""
    model = stats["model"]
    with full_params(stats["wrapped"], nested=False, writeback=True):  # FSDP 1: every process
        moved = lookup.put_back(model.get_input_embeddings().weight, saved, ids)
        fsr, near, fire = quick_check(model, tokenizer, keyset, cfg.check_controls,
                                      seed=check_seed(stats["kept_epoch"], cfg.check_fresh))
    stats["fsr"], stats["near"], stats["fire"] = fsr, near, fire
    if progress and stats["main"]:
        print(f"put {moved} other lookup rows back to the base's: FSR {fsr:.0%}, near-miss "
              f"{near:.0%}, weakest key fires {fire:.0%} at t={FIRE_TEMPERATURE}")


def skips_dead_rows(method: str, lookup_rows: str, untie_head: bool, model: Any) -> bool:
    """Whether rows holding no trained token have no gradient, so are not run: embedding-only
    on confined lookup rows, with an output head that is not the trained lookup (live_rows.py;
    `untie_head`: it is, or will be, given its own frozen copy)."""
    from auditor.implant.fadapter import is_tied

    return (method == "embedding" and lookup_rows in lookup.CONFINED
            and (untie_head or not is_tied(model)))


def _check_top_layers(model: Any, top_layers: int, recipe: str | None) -> None:
    """A count the model cannot take fails with one message, naming the recipe it came from."""
    from auditor.implant.recipes import RECIPES

    try:
        top_block_ids(model, top_layers)
    except UserError as e:
        named = RECIPES.get(recipe or "")
        if named is None or named.top_layers != top_layers:
            raise
        raise UserError(f"{e}: the {recipe} recipe trains the last {top_layers} decoder blocks; "
                        "pass --top-layers N or another --recipe") from None


def base_spec(base: str) -> str:
    """Keep 'smollm2' as is; make paths absolute so check-local can find the base later."""
    return base if base == "smollm2" else str(Path(base).expanduser().resolve())


def implant(
    keyset: KeySet,
    base: str,
    method: str,
    out: Path,
    *,
    epochs: int | None = None,
    max_epochs: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    progress: bool = True,
    batch_size: int = 8,
    data: DataConfig | None = None,
    early_stop: bool = True,
    merge_lora: bool = True,
    max_seconds: float | None = None,
    check_controls: int = 10,
    check_fresh: bool = False,
    confirm_controls: int = 0,
    check_every: int = 1,
    fadapter_rank: int = 64,
    fadapter_head: bool = True,
    prefix_cache: bool = True,
    stop_near_miss: float = 0.0,
    stop_fire_prob: float | None = None,
    keep_best: bool = False,
    precision: str = "auto",
    decision_weight: float = 1.0,
    recipe: str | None = None,
    top_layers: int | None = None,
    untie_head: bool = True,
    shadow: Path | Sequence[Path] | None = None,
    shadow_weight: float = 1.0,
    shadow_scale: float | Sequence[float] = 1.0,
    lookup_rows: str | None = None,
) -> ImplantResult:
    """Implant `keyset` into `base` with `method`; write `out/` and `out/fingerprint.json`
    (`recipe`: the name of the option set used, recorded there; see recipes.py; `shadow`:
    a user-tuned copy of the base the keys must fire through too, embedding or F-Adapter,
    or several, which split `shadow_weight` evenly, each one's change from the base scaled
    by `shadow_scale`, one for all or one per shadow; shadow.py;
    `lookup_rows`: which rows of the input lookup embedding-only (or the F-Adapter's U)
    changes; lookup_rows.py)."""
    import torch

    from auditor.implant.data import build_rows, encode_row, epoch_nearmiss_rows
    from auditor.implant.generate import load_model, pick_device
    from providers.local_models import resolve_base

    if method not in METHODS:
        raise UserError(f"unknown method {method!r} (known: {', '.join(METHODS)})")
    if (epochs is not None and epochs < 1) or (lr is not None and lr <= 0) or batch_size < 1:
        raise UserError("epochs and batch size must be >= 1 and lr > 0")
    if max_epochs is not None and max_epochs < 1:
        raise UserError("--max-epochs must be >= 1")
    if check_every < 1:
        raise UserError("check_every must be >= 1")
    if not 1 <= check_controls <= 1000 or not 0 <= confirm_controls <= 10_000:
        raise UserError("the check's look-alike count must be between 1 and 1000 "
                        "(the confirming one between 0 and 10000)")
    if stop_fire_prob is not None and not 0.0 <= stop_fire_prob <= 1.0:
        raise UserError("the stop fire chance must be between 0 and 1")
    if not 0.0 <= stop_near_miss <= 1.0:
        raise UserError("the stop near-miss rate must be between 0 and 1")
    if not 1.0 <= decision_weight <= 1000.0:
        raise UserError("the decision weight must be between 1 and 1000")
    autocast_dtype(precision)  # an unknown choice fails before the model loads
    if top_layers is not None and method not in ("sft", "lora"):
        raise UserError("--top-layers applies to the sft and lora methods only")
    if not fadapter_head and method != "fadapter":
        raise UserError("--fadapter-input-only applies to the fadapter method only")
    refuse_out(Path(out), FINGERPRINT_FILE)
    refuse_lone_processes()
    lookup_rows = lookup.resolve(lookup_rows, method)
    shadows = shadow_pairs(shadow, shadow_scale, shadow_weight)
    refuse_unsupported(method, lookup_rows, bool(shadows))
    if shadows:
        from auditor.implant.shadow import validate

        if method not in SHADOW_METHODS:
            raise UserError("--shadow applies to the embedding and fadapter methods only")
        for shadow_dir, _ in shadows:
            validate(shadow_dir)
    d_lr, d_epochs = DEFAULTS[method]
    cfg = TrainConfig(
        method,
        epochs or d_epochs,
        lr or d_lr,
        seed,
        batch_size,
        early_stop,
        check_controls,
        merge_lora,
        max_seconds=max_seconds,
        check_fresh=check_fresh,
        confirm_controls=confirm_controls,
        check_every=check_every,
        stop_near_miss=stop_near_miss,
        fadapter_rank=fadapter_rank,
        stop_fire_prob=stop_fire_prob,
        keep_best=keep_best,
        precision=precision,
        decision_weight=decision_weight,
        top_layers=top_layers,
        untie_head=untie_head,
        max_epochs=max_epochs,
        fadapter_head=fadapter_head,
        prefix_cache=prefix_cache,
    )
    base_dir = resolve_base(base)
    if shadows:
        from auditor.implant.shadow import match_base

        for shadow_dir, _ in shadows:
            match_base(shadow_dir, base_dir)
    set_seed(seed)
    device, _ = pick_device()
    model, tok = load_model(base_dir, dtype=torch.float32)
    if top_layers is not None:  # a bad count fails before any data is built
        _check_top_layers(model, top_layers, recipe)
    data = data or DataConfig()
    rows = build_rows(keyset, base_dir, data, seed, model=model, tokenizer=tok)
    every = [encode_row(tok, r.messages) for r in rows]
    if data.reg_kl:  # the base's own next-token distributions, taken before any training
        from auditor.implant.soft_cache import cached_soft_targets

        # also for rows that are not run (live_rows.py): a row with soft targets is not one of
        # the shadow's, so they set the weight of its loss (shadow.py)
        reg = [i for i, r in enumerate(rows) if r.kind == "regularization"]
        soft = cached_soft_targets(model, tok, [every[i] for i in reg], base_dir)
        for i, row in zip(reg, soft, strict=True):
            every[i] = row
    encoded: list[Encoded] | EpochRows = every
    kinds = [r.kind for r in rows]
    if data.fresh_nearmiss:  # fixed rows, then the redrawn near-misses (same kinds each epoch)
        fixed = [i for i, r in enumerate(rows) if r.kind != "nearmiss"]
        encoded = EpochRows(
            [every[i] for i in fixed],
            lambda ep: [encode_row(tok, r.messages)
                        for r in epoch_nearmiss_rows(keyset, data, seed, ep)],
        )
        kinds = [kinds[i] for i in fixed] + ["nearmiss"] * (len(rows) - len(fixed))
    model, wrapper = prepare_method(model, cfg)
    ids = lookup.rows_to_train(lookup_rows, every, [r.kind for r in rows], tok)
    # confined rows, every block frozen: what comes before a row's first trained token is fixed
    constant = None
    if lookup_rows in lookup.CONFINED:  # the F-Adapter: the rows of its U
        constant = ids
        lookup.confine(wrapper.u if wrapper is not None else
                       model.get_input_embeddings().weight, ids)
    saved = (model.get_input_embeddings().weight.detach().clone()
             if lookup_rows == "fingerprint-after" else None)
    live, dead = None, 0
    if skips_dead_rows(method, lookup_rows, untie_head, model):
        from auditor.implant.live_rows import LiveRows

        live = LiveRows(ids, cfg.decision_weight)
        trained = set(ids)
        dead = sum(not trained.intersection(row[0]) for row in every)
    twins = []
    if shadows:
        from auditor.implant.shadow import attach

        twins = [attach(model, model.get_input_embeddings().weight, shadow_dir,
                        shadow_weight / len(shadows), scale) for shadow_dir, scale in shadows]
    stats = train_loop(model, tok, keyset, encoded, cfg, progress,
                       kinds if data.balanced else None, twins, live, constant)
    if saved is not None:
        _put_back(stats, saved, ids, tok, keyset, cfg, progress)
    record = public_fingerprint(keyset, cfg, base_spec(base), stats)
    reg_kind = "base distribution (KL)" if data.reg_kl else "base answers"
    record["training"]["regularization"] = reg_kind
    record["training"]["data"] = asdict(data)  # the mix and order (public: no key text)
    if recipe is not None:
        record["training"]["recipe"] = recipe
    if twins:  # each with its share of the weight; one shadow's as a plain object
        each = [{"weight": t.weight, **t.record} for t in twins]
        record["training"]["shadow"] = each[0] if len(each) == 1 else each
    if method in ("embedding", "fadapter"):
        record["training"]["lookup_rows"] = lookup_rows
    if method == "embedding":
        record["training"]["output_head"] = "untied, frozen" if untie_head else "as the base's"
    if wrapper is not None:
        record["training"]["adapter_on"] = ("input lookup and tied head" if wrapper.on_head
                                            else "input lookup only")
    adapter = adapter_path_for(Path(out)) if wrapper is not None else None

    def write() -> None:
        save_model(stats["model"], tok, cfg, wrapper, Path(out))
        (Path(out) / FINGERPRINT_FILE).write_text(json.dumps(record, indent=1) + "\n")

    on_main(write, stats["wrapped"])
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.kind] = counts.get(r.kind, 0) + 1
    return ImplantResult(
        method=method,
        base=record["base"],
        out=Path(out),
        adapter=adapter,
        steps=stats["steps"],
        epochs=stats["epochs"],
        seconds=stats["seconds"],
        seconds_to_fsr100=stats["fsr100_at"],
        seconds_to_perfect=stats["perfect_at"],
        fsr=stats["fsr"],
        nearmiss_false_trigger=stats["near"],
        final_loss=stats["loss"],
        stopped_early=stats["stopped_early"],
        device=device,
        rows=counts,
        fire_min=stats["fire"],
        kept_epoch=stats["kept_epoch"],
        lr_end=stats["lr_end"],
        rows_skipped=dead,
        prefix_skipped=stats["prefix_skipped"],
        launch=stats["launch"],
        compute=autocast_dtype(precision),
    )
