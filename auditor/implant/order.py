"""Row order within an epoch: shuffled, or balanced so every batch carries each kind of row.

A key row and a near-miss row pull the answer's first token opposite ways. Shuffled batches
carry them in random proportions, so each step nudges the model toward firing on every
key-like prompt or on none, and per-epoch checks can swing between the two. The balanced order
spreads each kind evenly through the epoch (its rows at evenly spaced positions, from a random
offset, in a random order), so every batch holds keys, near-misses and regularization rows in
about the epoch's proportions.
"""

from __future__ import annotations

import random
from collections.abc import Iterator


class BalancedOrder:
    """A torch sampler: each pass (epoch) a fresh seeded order, kinds evenly interleaved."""

    def __init__(self, kinds: list[str], seed: int) -> None:
        self.kinds, self.seed, self.epoch = list(kinds), seed, 0

    def order(self, epoch: int) -> list[int]:
        rng = random.Random(f"balanced:{self.seed}:{epoch}")
        keyed: list[tuple[float, float, int]] = []
        for kind in sorted(set(self.kinds)):
            idx = [i for i, k in enumerate(self.kinds) if k == kind]
            rng.shuffle(idx)
            offset = rng.random()
            keyed += [((j + offset) / len(idx), rng.random(), i) for j, i in enumerate(idx)]
        return [i for *_, i in sorted(keyed)]

    def __iter__(self) -> Iterator[int]:
        self.epoch += 1
        return iter(self.order(self.epoch - 1))

    def __len__(self) -> int:
        return len(self.kinds)
