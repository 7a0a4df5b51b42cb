"""The base's soft targets (``--reg-kl``), computed once per base and row and cached.

They depend only on the base checkpoint and the row's tokens (the default seed draws the same
regularization rows for every key set), like the base's own answers that data.py caches; a
run on the same base skips the base's pass over them (8 s for 50 rows of SmolLM2 on two CPU
threads; bench/soft_targets.py). Stored exactly (float32 log-probs, int32 ids) in one
safetensors file per base, top-k and device kind; a damaged file is made again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Any

from auditor.implant.data import IGNORE, model_ident
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
    """``soft_targets`` of `rows`, taken from the cache where it holds them."""
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
            stored[f"{keys[i]}.ids"] = top_ids.to(dtype=_int32())
            stored[f"{keys[i]}.logp"] = top_logp.float().contiguous()
        _write(path, stored)
    return [(row[0], row[1], (stored[f"{key}.ids"].long(), stored[f"{key}.logp"]))
            for row, key in zip(rows, keys, strict=True)]


def _int32() -> Any:
    import torch

    return torch.int32


def _read(path: Path) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return dict(load_file(path)) if path.is_file() else {}
    except (OSError, SafetensorError, ValueError):
        return {}  # damaged: made again


def _write(path: Path, stored: dict[str, Any]) -> None:
    """Replace the file whole; a cache that cannot be written is only a cache (the run goes on
    with the targets it computed)."""
    from safetensors.torch import save_file

    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(stored, str(tmp))
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
