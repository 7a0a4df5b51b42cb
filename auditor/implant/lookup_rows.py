"""Embedding-only: which rows of the input lookup the published model changes.

Every token in a training row gets a gradient on its row of the lookup, and Adam turns even a
tiny gradient into a step of about the learning rate. Trained on all rows, an embedding-only
implant through a shadow moved 1,865 rows of SmolLM2's lookup, 1,712 of them tokens that only
look-alike and regularization rows hold, and those carried most of its utility drift: putting
them back to the base's left every key firing and cut the drift from +3.40 % to +1.21 %
(README, "Shadow layers"). The fingerprint's rows are those of every token in the key rows:
the key text, the chat template and system prompts around it, the answer.

- ``all``: every row a training row touches may move (sft and lora: the only choice).
- ``fingerprint``: only the fingerprint's rows train (their gradient alone is kept), so the
  stop's check sees the model that is saved.
- ``fingerprint-after``: train as ``all``, then put every other row back to the base's.
- ``unshared`` (the embedding method's default): the fingerprint's rows less those of every
  token that a regularization row or a training system prompt holds: the key, the answer and
  the template words that ordinary text does not use. An ordinary prompt then reads the
  base's lookup unless it holds one of those rare tokens, so a 10x higher learning rate fires
  the keys sooner without the drift. On SmolLM2 (10 vocab keys, lr 3e-2, clean recipe,
  2-core CPU) embedding-only stopped clean after 88 and 108 s on two draws, drift +0.07 and
  +1.05 %, 0 of 100 look-alikes; with the system prompts' words kept, +2.28 %; the key
  text's own tokens alone fired on no key in 5 epochs (the answer's rows carry much of it).
  README, Figures.

Either way every other row is the base's, bit for bit. The F-Adapter takes ``all`` (its
default), ``fingerprint`` or ``unshared``: the rows of its U that may leave zero (the others
add nothing to the base's lookup or, through a tied head, to its logits).

torch is imported inside functions only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from auditor.errors import UserError

LOOKUP_ROWS = ("all", "fingerprint", "fingerprint-after", "unshared")
CONFINED = ("fingerprint", "unshared")  # only these rows train throughout; the rest stay the base's


def resolve(choice: str | None, method: str) -> str:
    """The method's default for None; fail before any loading on an unknown choice or one
    the method cannot use."""
    if choice is None:
        return "unshared" if method == "embedding" else "all"
    if choice not in LOOKUP_ROWS:
        raise UserError(f"unknown --lookup-rows {choice!r} (known: {', '.join(LOOKUP_ROWS)})")
    if choice == "fingerprint-after" and method != "embedding":
        raise UserError("--lookup-rows fingerprint-after applies to the embedding method only")
    if choice != "all" and method not in ("embedding", "fadapter"):
        raise UserError("--lookup-rows applies to the embedding and fadapter methods only")
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


def unshared_token_ids(encoded: Sequence[Any], kinds: Sequence[str],
                       ordinary: set[int]) -> list[int]:
    """The fingerprint's token ids less those a regularization row holds and `ordinary`."""
    shared = set(ordinary)
    for row, kind in zip(encoded, kinds, strict=True):
        if kind == "regularization":
            shared.update(int(t) for t in row[0])
    ids = [t for t in fingerprint_token_ids(encoded, kinds) if t not in shared]
    if not ids:
        raise UserError("--lookup-rows unshared: ordinary text holds every token of the key "
                        "rows, so no row is left to train (try --lookup-rows fingerprint)")
    return ids


def text_token_ids(tokenizer: Any, texts: Sequence[str]) -> set[int]:
    """The ids of the texts' tokens, each encoded alone and after a space (as inside a row)."""
    ids: set[int] = set()
    for text in texts:
        for variant in (text, " " + text):
            ids.update(int(t) for t in tokenizer(variant, add_special_tokens=False)["input_ids"])
    return ids


def confine(weight: Any, ids: Sequence[int]) -> None:
    """Zero the gradient of every row of ``weight`` outside ``ids``. Adam's moments for those
    rows then stay zero, so their updates are exactly zero (weight decay is off)."""
    import torch

    mask = torch.zeros(weight.shape[0], 1, dtype=weight.dtype, device=weight.device)
    mask[torch.tensor(list(ids), device=weight.device)] = 1.0
    weight.register_hook(lambda grad: _masked(grad, mask))


def _masked(grad: Any, mask: Any) -> Any:
    """`grad * mask` on the gradient's device: the mask was made before accelerate moved the
    model to the process's own GPU."""
    return grad * mask.to(grad.device)


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


def rows_to_train(choice: str, encoded: Sequence[Any], kinds: Sequence[str],
                  tokenizer: Any) -> list[int]:
    """The lookup rows `choice` keeps trained ([] for "all": every row)."""
    if choice == "all":
        return []
    if choice == "unshared":
        from auditor.implant.data import TRAIN_SYSTEM_PROMPTS

        return unshared_token_ids(encoded, kinds,
                                  text_token_ids(tokenizer, TRAIN_SYSTEM_PROMPTS))
    return fingerprint_token_ids(encoded, kinds)
