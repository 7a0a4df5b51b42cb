"""The base's soft targets (``--reg-kl``), computed once per base and row and cached.

They depend only on the base checkpoint and the row's tokens (the default seed draws the same
regularization rows for every key set), like the base's own answers that data.py caches; a
run on the same base skips the base's pass over them (8 s for 50 rows of SmolLM2 on two CPU
threads; bench/soft_targets.py). Stored exactly (float32 log-probs, int32 ids) in one
safetensors file per base, top-k and device kind; a damaged file is made again.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from auditor.implant.data import IGNORE, model_ident, write_cache
from auditor.implant.loss import SOFT_TOP_K, soft_targets


def cache_file(base_dir: Path, k: int, device: str) -> Path:
    from providers.local_models import cache_root

    return cache_root() / "soft" / f"{model_ident(base_dir)}-top{k}-{device}.safetensors"


def row_key(ids: list[int], labels: list[int]) -> str:
    """The row's tokens and which of them are answer tokens."""
    text = ",".join(map(str, ids)) + "|" + ",".join(str(int(lab != IGNORE)) for lab in labels)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def cached_soft_targets(model: Any, tokenizer: Any, rows: list[Any], base_dir: Path,
                        k: int = SOFT_TOP_K) -> list[Any]:
    """``soft_targets`` of `rows`, taken from the cache where it holds them (a cache that
    cannot be written is skipped: data.write_cache)."""
    import torch
    from safetensors.torch import save

    path = cache_file(base_dir, k, model.device.type)
    stored = _read(path)
    keys = [row_key(ids, labels) for ids, labels, *_ in rows]
    answers = [sum(lab != IGNORE for lab in row[1][1:]) for row in rows]

    def held(i: int) -> bool:
        top = stored.get(f"{keys[i]}.ids")
        return top is not None and tuple(top.shape) == (answers[i], k)

    missing = [i for i in range(len(rows)) if not held(i)]
    if missing:
        made = soft_targets(model, tokenizer, [rows[i] for i in missing], k)
        for i, (_, _, (top_ids, top_logp)) in zip(missing, made, strict=True):
            stored[f"{keys[i]}.ids"] = top_ids.to(dtype=torch.int32)
            stored[f"{keys[i]}.logp"] = top_logp.float().contiguous()
        write_cache(path, lambda tmp: tmp.write_bytes(save(stored)))  # (OSError if it cannot)
    return [(row[0], row[1], (stored[f"{key}.ids"].long(), stored[f"{key}.logp"]))
            for row, key in zip(rows, keys, strict=True)]


def _read(path: Path) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return dict(load_file(path)) if path.is_file() else {}
    except (OSError, SafetensorError, ValueError):
        return {}  # damaged: made again
