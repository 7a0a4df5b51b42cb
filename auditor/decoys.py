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
MAX_PARTS = 3  # at most this many pool prompts joined into one decoy
SHORT = 0.8  # join another prompt while the decoy is shorter than this share of the target


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
    """``n`` decoys, no pool prompt used twice, whose lengths follow ``target_lengths``.

    For each decoy a target length is drawn from ``target_lengths``; one of the
    ``NEAREST`` unused prompts closest to it is taken at random. When the pool's prompts
    are much shorter than the target, up to ``MAX_PARTS`` of them are joined (a user
    asking several things at once), id "d012+d340".
    """
    if n <= 0:
        return []
    prompts = list(decoy_pool() if pool is None else pool)
    if n > len(prompts):
        raise UserError(f"asked for {n} decoys but the decoy pool has {len(prompts)} prompts")
    if not target_lengths:
        raise UserError("decoys need at least one key length to match")
    free = sorted((len(text), idx) for idx, text in enumerate(prompts))
    chosen: list[Decoy] = []
    for made in range(n):
        target = target_lengths[rng.randbelow(len(target_lengths))]
        parts: list[int] = []
        length = -1
        # keep enough prompts for the decoys still to come
        while len(parts) < MAX_PARTS and len(free) > n - made - 1 and \
                (not parts or length < SHORT * target):
            idx = _take_nearest(free, target - length - 1, rng)
            parts.append(idx)
            length += len(prompts[idx]) + 1
        chosen.append(Decoy("+".join(f"d{i:03d}" for i in parts),
                            " ".join(prompts[i] for i in parts)))
    return chosen


def _take_nearest(free: list[tuple[int, int]], target: int, rng: Csprng) -> int:
    """Remove and return one of the NEAREST unused pool entries closest to ``target``."""
    pos = bisect.bisect_left(free, (target, -1))
    lo, hi = max(0, pos - NEAREST), min(len(free), pos + NEAREST)
    window = sorted(range(lo, hi), key=lambda i: (abs(free[i][0] - target), free[i][1]))
    pick = window[rng.randbelow(min(NEAREST, len(window)))]
    return free.pop(pick)[1]


def decoy_by_id(decoy_id: str, pool: Sequence[str] | None = None) -> Decoy:
    prompts = list(decoy_pool() if pool is None else pool)
    try:
        parts = [prompts[int(p.removeprefix("d"))] for p in decoy_id.split("+")]
    except (ValueError, IndexError) as exc:
        raise UserError(f"unknown decoy id {decoy_id!r}") from exc
    return Decoy(decoy_id, " ".join(parts))


def control_keys(keyset: KeySet, n: int, seed: int) -> list[Key]:
    """Fresh control keys of the key set's style (ids c000..); empty when n is 0."""
    if n <= 0:
        return []
    controls = keyset.controls(n, seed)
    committed = {k.text for k in keyset.keys}
    if any(c.text in committed for c in controls):  # the contract forbids it; check anyway
        raise UserError("control key generation returned a committed key")
    return list(controls)
