"""bf16 autocast on a CPU, made to pay: frozen weights cast once, attention that runs fast.

Under autocast a linear layer's fp32 weight is cast to bf16 on every call; torch keeps the cast
only for weights that train. With every block frozen (embedding-only, the F-Adapter, LoRA's base
layers) each step recast the whole model, twice through a shadow: on a 2-core Intel with AMX an
embedding-only epoch spent 14 % of its time in those copies. `CastOnce` holds a bf16 copy of
each frozen linear weight and swaps it in for a training step only: autocast would have made
the same bf16 values, so the step computes the same numbers, and outside the step (checks that
decode in fp32, the save) every weight is its fp32 self again.

The CPU's flash attention kernel runs its backward pass 2-4x slower in bf16 than in fp32 at
these shapes (torch 2.13; 4.8 vs 1.8 ms for 5 x 9 heads x 63 queries over 87 keys), where the
plain matrix-product kernel takes 2.7 ms: `cpu_step` picks that one for bf16 training steps.

torch is imported inside functions only.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any


class CastOnce:
    """bf16 copies of the frozen fp32 linear weights of `models`, swapped in by `held()`.
    A weight that any other kind of module also holds (a head tied to the input lookup) is
    left alone: autocast does not cast a lookup, so a bf16 one would change the numbers."""

    def __init__(self, models: Sequence[Any]) -> None:
        import torch
        from torch import nn

        seen: dict[int, Any] = {}
        other: set[int] = set()
        for model in models:
            for module in model.modules():
                own = list(module.parameters(recurse=False))
                if isinstance(module, nn.Linear):
                    seen.update((id(p), p) for p in own)
                else:
                    other.update(id(p) for p in own)
        self.pairs = [(p, p.data, p.data.to(torch.bfloat16)) for i, p in seen.items()
                      if i not in other and not p.requires_grad and p.dtype == torch.float32]

    @contextmanager
    def held(self) -> Iterator[None]:
        """Within: each frozen linear weight is its bf16 copy (for a step under autocast)."""
        for p, _, low in self.pairs:
            p.data = low
        try:
            yield
        finally:
            for p, full, _ in self.pairs:
                p.data = full


def cpu_step(models: Sequence[Any], device: str, bf16: bool) -> Any:
    """A context factory for one bf16 training step on a CPU (frozen weights held in bf16, the
    matrix-product attention); on a GPU or in fp32 it changes nothing."""
    if device != "cpu" or not bf16:
        return nullcontext
    cast = CastOnce(models)

    @contextmanager
    def step() -> Iterator[None]:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with cast.held(), sdpa_kernel([SDPBackend.MATH]):
            yield

    return step
