"""Decoys: ordinary prompts and control keys that hide the committed keys in an audit.

Ordinary prompts come from ``auditor.prompts.ordinary_prompts("decoy")`` (a bundled,
varied list) and are picked to match the length distribution of the rendered key prompts,
so an endpoint cannot single out keys by size. Control keys are fresh keys drawn by the
key set itself (same style and length distribution), seeded so a resume rebuilds them.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from auditor.errors import UserError
from auditor.schedule import Csprng

if TYPE_CHECKING:
    from auditor.keys import Key, KeySet

NEAREST = 3  # pick among this many closest-in-length unused prompts


@dataclass(frozen=True)
class Decoy:
    id: str  # "d045": index 45 of the decoy pool
    text: str

    def __repr__(self) -> str:
        return f"Decoy(id={self.id!r}, chars={len(self.text)})"


def decoy_pool() -> list[str]:
    from auditor.prompts import ordinary_prompts

    return ordinary_prompts("decoy")


def select_decoys(target_lengths: Sequence[int], n: int, rng: Csprng,
                  pool: Sequence[str] | None = None) -> list[Decoy]:
    """``n`` distinct pool prompts whose lengths follow ``target_lengths``.

    For each decoy a target length is drawn from ``target_lengths``; one of the
    ``NEAREST`` unused prompts closest to it is taken at random.
    """
    if n <= 0:
        return []
    prompts = list(decoy_pool() if pool is None else pool)
    if n > len(prompts):
        raise UserError(f"asked for {n} decoys but the decoy pool has {len(prompts)} prompts")
    if not target_lengths:
        raise UserError("decoys need at least one key length to match")
    # unused pool entries sorted by (length, index)
    free = sorted((len(text), idx) for idx, text in enumerate(prompts))
    chosen: list[Decoy] = []
    for _ in range(n):
        target = target_lengths[rng.randbelow(len(target_lengths))]
        pos = bisect.bisect_left(free, (target, -1))
        lo, hi = max(0, pos - NEAREST), min(len(free), pos + NEAREST)
        window = sorted(range(lo, hi), key=lambda i: (abs(free[i][0] - target), free[i][1]))
        pick = window[rng.randbelow(min(NEAREST, len(window)))]
        _, idx = free.pop(pick)
        chosen.append(Decoy(f"d{idx:03d}", prompts[idx]))
    return chosen


def decoy_by_id(decoy_id: str, pool: Sequence[str] | None = None) -> Decoy:
    prompts = list(decoy_pool() if pool is None else pool)
    try:
        idx = int(decoy_id.removeprefix("d"))
        return Decoy(decoy_id, prompts[idx])
    except (ValueError, IndexError) as exc:
        raise UserError(f"unknown decoy id {decoy_id!r}") from exc


def control_keys(keyset: KeySet, n: int, seed: int) -> list[Key]:
    """Fresh control keys of the key set's style (ids c000..); empty when n is 0."""
    if n <= 0:
        return []
    controls = keyset.controls(n, seed)
    committed = {k.text for k in keyset.keys}
    if any(c.text in committed for c in controls):  # the contract forbids it; check anyway
        raise UserError("control key generation returned a committed key")
    return list(controls)
