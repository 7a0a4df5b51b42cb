"""Query order: a seeded CSPRNG shuffle that keeps every category spread over the schedule.

The order must be unpredictable to the endpoint (so it cannot tell keys from decoys by
position) yet reproducible by the auditor (the seed is recorded in the secret store and
published after the run). A SHA-256 counter-mode stream gives both.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def new_seed() -> str:
    """A fresh 256-bit seed, hex encoded."""
    return secrets.token_hex(32)


class Csprng:
    """Deterministic cryptographic stream: SHA-256(seed || label || counter)."""

    def __init__(self, seed: str, label: str = "") -> None:
        if not seed:
            raise ValueError("empty CSPRNG seed")
        self._prefix = f"{seed}|{label}|".encode()
        self._counter = 0

    def _block(self) -> bytes:
        self._counter += 1
        return hashlib.sha256(self._prefix + str(self._counter).encode()).digest()

    def u64(self) -> int:
        return int.from_bytes(self._block()[:8], "big")

    def randbelow(self, n: int) -> int:
        """Uniform integer in [0, n) by rejection sampling (no modulo bias)."""
        if n <= 0:
            raise ValueError("randbelow needs n > 0")
        limit = (1 << 64) - ((1 << 64) % n)
        while True:
            value = self.u64()
            if value < limit:
                return value % n

    def random(self) -> float:
        """Uniform float in [0, 1) with 53 bits."""
        return (self.u64() >> 11) / float(1 << 53)

    def shuffle(self, items: list[T]) -> None:
        """Fisher–Yates in place."""
        for i in range(len(items) - 1, 0, -1):
            j = self.randbelow(i + 1)
            items[i], items[j] = items[j], items[i]

    def derive_int(self, bits: int = 63) -> int:
        """An integer seed for other generators (e.g. control keys)."""
        return self.u64() >> (64 - bits)


def spread_shuffle(items: Sequence[T], category: Callable[[T], str], rng: Csprng) -> list[T]:
    """Shuffle so that each category is spread evenly over the whole order.

    Items of a category with n members are shuffled, then the i-th gets the position
    (i + u) / n with u uniform in [0, 1); sorting all positions interleaves the categories
    so any prefix holds each category in about its overall share (within one item).
    """
    groups: dict[str, list[T]] = {}
    for item in items:
        groups.setdefault(category(item), []).append(item)
    keyed: list[tuple[float, int, T]] = []
    for name in sorted(groups):
        members = groups[name]
        rng.shuffle(members)
        n = len(members)
        for i, item in enumerate(members):
            keyed.append(((i + rng.random()) / n, rng.u64(), item))
    keyed.sort(key=lambda entry: (entry[0], entry[1]))
    return [item for _, _, item in keyed]
