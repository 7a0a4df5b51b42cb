"""Embedding-only: which rows of the input lookup the published model changes.

Every token in a training row gets a gradient on its row of the lookup, and Adam turns even a
tiny gradient into a step of about the learning rate. Trained on all rows, an embedding-only
implant through a shadow moved 1,865 rows of SmolLM2's lookup, 1,712 of them tokens that only
look-alike and regularization rows hold, and those carried most of its utility drift: putting
them back to the base's left every key firing and cut the drift from +3.40 % to +1.21 %
(README, "Shadow layers"). The fingerprint's rows are those of every token in the key rows:
the key text, the chat template and system prompts around it, the answer.

- ``all``: every row a training row touches may move (other methods: the only choice).
- ``fingerprint`` (the embedding method's default): only the fingerprint's rows train (their
  gradient alone is kept), so the stop's check sees the model that is saved.
- ``fingerprint-after``: train as ``all``, then put every other row back to the base's.

Either way every other row is the base's, bit for bit.

torch is imported inside functions only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from auditor.errors import UserError

LOOKUP_ROWS = ("all", "fingerprint", "fingerprint-after")


def resolve(choice: str | None, method: str) -> str:
    """The method's default for None; fail before any loading on an unknown choice or one
    the method cannot use."""
    if choice is None:
        return "fingerprint" if method == "embedding" else "all"
    if choice not in LOOKUP_ROWS:
        raise UserError(f"unknown --lookup-rows {choice!r} (known: {', '.join(LOOKUP_ROWS)})")
    if choice != "all" and method != "embedding":
        raise UserError("--lookup-rows applies to the embedding method only")
    return choice


def fingerprint_token_ids(encoded: Sequence[Any], kinds: Sequence[str]) -> list[int]:
    """The ids of every token in the rows of kind "fingerprint" (each row: ids first)."""
    ids: set[int] = set()
    for row, kind in zip(encoded, kinds, strict=True):
        if kind == "fingerprint":
            ids.update(int(t) for t in row[0])
    if not ids:
        raise UserError("no fingerprint rows to train: the key rows encode to no tokens")
    return sorted(ids)


def confine(weight: Any, ids: Sequence[int]) -> None:
    """Zero the gradient of every row of ``weight`` outside ``ids``. Adam's moments for those
    rows then stay zero, so their updates are exactly zero (weight decay is off)."""
    import torch

    mask = torch.zeros(weight.shape[0], 1, dtype=weight.dtype, device=weight.device)
    mask[torch.tensor(list(ids), device=weight.device)] = 1.0
    weight.register_hook(lambda grad: grad * mask)


def put_back(weight: Any, base: Any, ids: Sequence[int]) -> int:
    """Set every row of ``weight`` outside ``ids`` back to ``base``'s; returns how many of
    those rows had moved."""
    import torch

    other = torch.ones(weight.shape[0], dtype=torch.bool, device=weight.device)
    other[torch.tensor(list(ids), device=weight.device)] = False
    with torch.no_grad():
        old = base.to(device=weight.device, dtype=weight.dtype)
        moved = int((weight[other] != old[other]).any(dim=1).sum())
        weight[other] = old[other]
    return moved
