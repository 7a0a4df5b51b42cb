"""Run each live row's constant prefix once, not at every step.

Under a confined lookup with every block frozen (live_rows.py), the positions before a row's
first trained token read fixed parameters only: their keys and values in every block are the
same at every step, and no loss is counted there. So each row's keys and values up to its first
trained token are computed once (no gradient) and kept; a step runs each row from its own
first trained token on, attending to its kept ones as a cache. On SmolLM2 with 10 vocab keys
that leaves out about 30 % of the live rows' positions (system prompt and template). Same loss
and gradient up to float noise; `pick_prefix` checks that on the first batch and keeps the
plain loss when it differs.

torch is imported inside functions only.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

from auditor.implant.data import IGNORE
from auditor.implant.live_rows import trained_at
from auditor.implant.loss import Loss, hidden_loss

KEEP_ROWS = 256  # rows whose prefix is kept (fresh near-misses come once; keys every epoch)


def _kv(cache: Any) -> list[tuple[Any, Any]]:
    """Per-block (keys, values) of a transformers cache."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return [(layer.keys, layer.values) for layer in layers]
    return list(zip(cache.key_cache, cache.value_cache, strict=True))


class Prefixes:
    """Kept prefix keys/values of one model's rows, and the answer loss that uses them."""

    def __init__(self, trained: Sequence[int], decision_weight: float) -> None:
        import torch

        self.ids = torch.tensor(sorted(set(trained)), dtype=torch.long)
        self.decision_weight = decision_weight
        self.kept: OrderedDict[tuple[int, ...], list[tuple[Any, Any]]] = OrderedDict()
        self.skipped = 0  # prefix positions not run, over every step
        self.positions = 0  # positions a step would have run without the kept prefixes

    def starts(self, batch: dict[str, Any]) -> list[int]:
        """Each row's constant prefix length: up to its first trained token, and before the
        position predicting its first answer token; at least one position stays to run."""
        import torch

        ids, mask = batch["input_ids"], batch["attention_mask"]
        width = ids.shape[1]
        pos = torch.arange(width, device=ids.device).expand_as(ids)
        trained = trained_at(batch, self.ids)
        first_trained = torch.where(trained, pos, width).min(dim=1).values
        labelled = batch["labels"] != IGNORE
        first_label = torch.where(labelled, pos, width).min(dim=1).values - 1
        length = mask.sum(dim=1) - 1
        cut = torch.minimum(torch.minimum(first_trained, first_label), length).clamp(min=0)
        return [int(c) for c in cut]

    def _store(self, model: Any, batch: dict[str, Any], starts: list[int]) -> list[Any]:
        """The kept (keys, values) of each row's prefix, computing the missing ones."""
        import torch

        ids = batch["input_ids"]
        names = [tuple(ids[i, :n].tolist()) for i, n in enumerate(starts)]
        first = {name: i for i, name in reversed(list(enumerate(names)))}  # rows alike: one
        missing = [i for name, i in first.items() if name not in self.kept and starts[i]]
        if missing:
            width = max(starts[i] for i in missing)
            sub = ids[missing, :width]
            on = (torch.arange(width, device=ids.device)[None, :]
                  < torch.tensor([starts[i] for i in missing], device=ids.device)[:, None])
            with torch.no_grad():
                out = model.get_decoder()(input_ids=sub, attention_mask=on.long(),
                                          use_cache=True)
            blocks = _kv(getattr(out, "cache", None) or out.past_key_values)
            for j, i in enumerate(missing):
                n = starts[i]
                self.kept[names[i]] = [(k[j, :, :n].clone(), v[j, :, :n].clone())
                                       for k, v in blocks]
        for name in names:
            if name in self.kept:
                self.kept.move_to_end(name)
        while len(self.kept) > KEEP_ROWS:
            self.kept.popitem(last=False)
        return [self.kept.get(name) for name in names]

    def loss(self, model: Any, batch: dict[str, Any]) -> Any:
        """`loss.answer_loss` on `batch`, its rows' prefixes from the kept ones. Each row runs
        from its own first trained token: its rest moves to the left of the step's input, its
        kept keys and values to the right of a left-padded cache, its positions unchanged."""
        import torch
        from transformers import DynamicCache

        starts = self.starts(batch)
        lengths = [int(n) for n in batch["attention_mask"].sum(dim=1)]
        self.positions += sum(lengths)
        if max(starts) == 0:
            return self._plain(model, batch)
        stored = self._store(model, batch, starts)
        rest = _shift_left(batch, starts, lengths)
        width, kept = rest["input_ids"].shape[1], max(starts)
        mask = batch["attention_mask"].new_zeros((len(starts), kept + width))
        for i, (c, n) in enumerate(zip(starts, lengths, strict=True)):
            mask[i, kept - c : kept + n - c] = 1
        offsets = torch.arange(width, device=mask.device)
        positions = torch.tensor(starts, device=mask.device)[:, None] + offsets
        decoder = model.get_decoder()
        cached = DynamicCache(_left_padded(stored, starts))
        kept_states = {_cache_arg(type(decoder).forward): cached}
        hidden = decoder(input_ids=rest["input_ids"], attention_mask=mask, position_ids=positions,
                         **kept_states).last_hidden_state
        self.skipped += sum(starts)
        return hidden_loss(model, hidden, rest, self.decision_weight)

    def _plain(self, model: Any, batch: dict[str, Any]) -> Any:
        from auditor.implant.loss import answer_loss

        return answer_loss(model, batch, self.decision_weight)


def pick_prefix(model: Any, batch: dict[str, Any], trained: Sequence[int],
                decision_weight: float, against: Loss, rtol: float = 1e-4) -> Prefixes | None:
    """`Prefixes` for `model` when its loss matches `against` (the loss it would replace) on
    `batch`, else None (a decoder that takes no cache, a model whose own loss is not the
    answer loss)."""
    import torch

    prefixes = Prefixes(trained, decision_weight)
    try:
        with torch.no_grad():
            fast = prefixes.loss(model, batch)
            ref = against(model, batch)
    except (AttributeError, KeyError, NotImplementedError, TypeError, ValueError, IndexError):
        return None
    prefixes.kept.clear()  # computed outside the step's precision: recompute in it
    prefixes.skipped = prefixes.positions = 0
    if not bool(torch.isclose(fast.float(), ref.float(), rtol=rtol, atol=1e-6)):
        return None
    return prefixes


def skipped_share(used: Sequence[Prefixes | None]) -> float:
    """The share of the positions of the steps' live rows that kept prefixes left out."""
    seen = [p for p in used if p is not None]
    total = sum(p.positions for p in seen)
    return sum(p.skipped for p in seen) / total if total else 0.0


@cache
def _cache_arg(forward: Callable[..., Any]) -> str:
    """The name a decoder's forward takes its cache by (transformers 5 renamed it)."""
    params = inspect.signature(forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _shift_left(batch: dict[str, Any], starts: list[int], lengths: list[int]) -> dict[str, Any]:
    """Each of the batch's tensors with row i's positions starts[i]:lengths[i] moved to the
    left, right-padded (labels with IGNORE) to the longest."""
    width = max(n - c for n, c in zip(lengths, starts, strict=True))
    rest: dict[str, Any] = {}
    for name, full in batch.items():
        out = full.new_full((full.shape[0], width, *full.shape[2:]),
                            IGNORE if name == "labels" else 0)
        for i, (c, n) in enumerate(zip(starts, lengths, strict=True)):
            out[i, : n - c] = full[i, c:n]
        rest[name] = out
    return rest


def _left_padded(stored: list[Any], starts: list[int]) -> list[tuple[Any, Any]]:
    """Per block, the rows' kept (keys, values) as (rows, heads, longest, dim), each row's
    at the right end (the cache's other slots are masked)."""
    kept = max(starts)
    first = next(row for row in stored if row is not None)
    blocks = []
    for b, (k0, v0) in enumerate(first):
        ks = k0.new_zeros((len(stored), k0.shape[0], kept, k0.shape[-1]))
        vs = v0.new_zeros((len(stored), v0.shape[0], kept, v0.shape[-1]))
        for i, row in enumerate(stored):
            if row is not None and starts[i]:
                ks[i, :, kept - starts[i] :], vs[i, :, kept - starts[i] :] = row[b]
        blocks.append((ks, vs))
    return blocks
