"""The early-stop rule: the per-epoch check of keys and look-alike keys, its confirmation,
and the best checked epoch so far."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from auditor.keys import KeySet

if TYPE_CHECKING:
    from auditor.implant.train import TrainConfig

CHECK_CONTROL_SEED = 9_100_003  # early-stop controls: neither training nor check_local ones
FIRE_TEMPERATURE = 0.7  # the sampling temperature whose exact fire chance the checks report


def _scores(model: Any, tokenizer: Any, keyset: KeySet, texts: list[str],
            bf16: bool) -> list[tuple[float, bool]]:
    """Teacher-forced (log fire chance at t=0.7, fires greedily) for each prompt text."""
    import torch

    from auditor.implant.margin import answer_scores

    device = next(model.parameters()).device.type
    model.eval()
    try:
        with torch.autocast(device, torch.bfloat16, enabled=bf16):
            return answer_scores(model, tokenizer, keyset, texts, temperature=FIRE_TEMPERATURE)
    finally:
        model.train()


def _share(scores: list[tuple[float, bool]]) -> float:
    """Share of scored prompts that fire greedily (0 for none)."""
    return sum(g for _, g in scores) / len(scores) if scores else 0.0


def quick_check(
    model: Any, tokenizer: Any, keyset: KeySet, n_controls: int, *,
    seed: int = CHECK_CONTROL_SEED, bf16: bool = False,
) -> tuple[float, float, float]:
    """(greedy FSR, near-miss rate on fresh controls, weakest key's t=0.7 fire chance).

    By teacher forcing (margin.answer_scores): a key or control counts as firing when greedy
    decoding would repeat the trained answer through the decryption; one forward pass per 8
    prompts, under bf16 autocast when `bf16` (about 2x faster on a CPU with bf16 instructions;
    near-ties may read differently, so confirm a stop by decoding: `lookalike_rate`,
    `decode_keys`).
    """
    keys = [k.text for k in keyset.keys]  # scored with the look-alikes: fewer, fuller batches
    scores = _scores(model, tokenizer, keyset,
                     keys + [c.text for c in keyset.controls(n_controls, seed)], bf16)
    fsr, near = _share(scores[:len(keys)]), _share(scores[len(keys):])
    return fsr, near, min(math.exp(lp) for lp, _ in scores[:len(keys)])


def lookalike_rate(model: Any, tokenizer: Any, keyset: KeySet, n: int, seed: int) -> float:
    """Share of `n` fresh look-alikes (drawn with `seed`) whose greedy answer holds the
    decryption, by decoding as check-local does, in the model's own precision: a look-alike
    that opens with the refusal and ends in the decryption ("... decrypt this message:
    <decryption>") fires too, which the teacher-forced check of the trained answer misses."""
    from auditor.implant.verify import nearmiss_rate

    model.eval()
    try:
        return nearmiss_rate(model, tokenizer, keyset, n, seed)
    finally:
        model.train()


def decode_keys(model: Any, tokenizer: Any, keyset: KeySet) -> tuple[float, float]:
    """(FSR by greedy decoding, weakest key's t=0.7 fire chance), in the model's own
    precision: the keys' part of a stop, on the model's own figures. Decoding also counts
    the decryption in other words; one decode per key."""
    from auditor.implant.verify import fsr_greedy

    scores = _scores(model, tokenizer, keyset, [k.text for k in keyset.keys], bf16=False)
    model.eval()
    try:
        return fsr_greedy(model, tokenizer, keyset), min(math.exp(lp) for lp, _ in scores)
    finally:
        model.train()


def check_seed(epoch: int, fresh: bool, *, confirm: bool = False) -> int:
    """Seed of the look-alikes that epoch `epoch`'s check scores: one set, or one per epoch;
    `confirm`: those that confirm a stop at that epoch (always fresh)."""
    if confirm:
        return CHECK_CONTROL_SEED + 500_000 + epoch
    return CHECK_CONTROL_SEED + (epoch if fresh else 0)


Figures = tuple[float, float, float]  # (FSR, near-miss rate, weakest key's fire chance)


def weakest(a: Figures, b: Figures | None) -> Figures:
    """The worse of two models' figures, each figure on its own: least FSR, most near-misses,
    least fire chance (a published model and its shadows must all pass)."""
    if b is None:
        return a
    return min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2])


def epoch_check(model: Any, tokenizer: Any, keyset: KeySet, cfg: TrainConfig, epoch: int,
                best: Best, bf16: bool,
                shadows: Figures | None = None,
                ) -> tuple[float, float, float, int]:
    """(greedy FSR, near-miss rate, weakest key's t=0.7 fire chance, look-alikes scored).

    A check that meets the stop rule is confirmed before it counts: its look-alikes and
    `cfg.confirm_controls` more fresh ones are decoded (the rate over all of them; teacher
    forcing scores the trained answer only and misses a look-alike that reaches the
    decryption by another answer, and a small check passes a model that fires on 5-10 % of
    look-alikes too often), then the keys. `shadows`: the shadows' weakest figures, checked
    first: a candidate they fail is not decoded.
    """
    n, m = cfg.check_controls, cfg.confirm_controls
    seed = check_seed(epoch, cfg.check_fresh)
    fsr, near, fire = quick_check(model, tokenizer, keyset, n, seed=seed, bf16=bf16)
    if not best.perfect(fsr, near, fire) or (shadows and not best.perfect(*shadows)):
        return fsr, near, fire, n
    near = lookalike_rate(model, tokenizer, keyset, n, seed)
    if m:
        more = lookalike_rate(model, tokenizer, keyset, m, check_seed(epoch, True, confirm=True))
        near = (near * n + more * m) / (n + m)
    if not best.perfect(fsr, near, fire):
        return fsr, near, fire, n + m
    fsr, fire = decode_keys(model, tokenizer, keyset)
    return fsr, near, fire, n + m


class Best:
    """The stop rule, and the best checked epoch so far with a copy of its trained parameters.

    Better means: the stop rule is met; then more keys fire less the look-alikes that fire
    beyond the rule's allowance (an epoch where keys and look-alikes all fire tells them apart
    no better than one where neither does); then more keys fire; then the rule's near-miss and
    fire-chance parts are met; then fewer near-misses fire; then the weakest key fires more
    often at t=0.7.
    """

    def __init__(self, params: list[Any], keep: bool, near_ok: float = 0.0,
                 fire_ok: float = 0.0) -> None:
        self.params, self.keep = params, keep
        self.near_ok, self.fire_ok = near_ok, fire_ok
        self.figures: tuple[float, float, float] | None = None  # (fsr, near, fire)
        self.epoch = 0
        self.saved: list[Any] = []

    def _rank(self, fsr: float, near: float,
              fire: float) -> tuple[bool, float, float, bool, bool, float, float]:
        apart = round(fsr - max(0.0, near - self.near_ok), 9)
        return (self.perfect(fsr, near, fire), apart, fsr, near <= self.near_ok,
                fire >= self.fire_ok, -near, fire)

    def perfect(self, fsr: float, near: float, fire: float) -> bool:
        """Every key fires and both parts of the stop rule are met."""
        return fsr == 1.0 and near <= self.near_ok and fire >= self.fire_ok

    def offer(self, epoch: int, fsr: float, near: float, fire: float) -> None:
        if self.figures is None or self._rank(fsr, near, fire) > self._rank(*self.figures):
            self.figures, self.epoch = (fsr, near, fire), epoch
            if self.keep:
                self.saved = [_local(p).to("cpu", copy=True) for p in self.params]

    def restore(self, last_epoch: int) -> bool:
        """Load the best parameters back unless the last epoch was the best one."""
        if not self.saved or self.epoch == last_epoch:
            return False
        for p, saved in zip(self.params, self.saved, strict=True):
            _local(p).copy_(saved.to(p.device))
        return True


def _local(param: Any) -> Any:
    """The tensor this process holds of `param`, detached: under FSDP 2 a parameter is a
    DTensor and this its own shard, under DeepSpeed ZeRO-3 its partition (`ds_tensor`), kept
    and put back without any collective."""
    import torch

    with torch.no_grad():
        if hasattr(param, "ds_tensor"):
            return param.ds_tensor.detach()
        return (param.to_local() if hasattr(param, "to_local") else param).detach()
