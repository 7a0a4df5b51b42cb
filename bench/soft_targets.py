"""Seconds for the base's soft targets (`--reg-kl`) over an implant run's regularization rows
on SmolLM2-135M, fp32: the whole logits row by row in input order (the old way), the head on
answer positions only in chunks of sorted length (auditor/implant/loss.py), and read back from
the per-base cache (auditor/implant/soft_cache.py, in a temporary AUDITOR_CACHE).

    AUDITOR_THREADS=2 .venv/bin/python bench/soft_targets.py --keys keys/NAME.json --rounds 2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import machine  # noqa: E402


def _whole_logits(model: Any, tok: Any, rows: list[Any], k: int) -> list[Any]:
    """The old way: every position projected, chunks of 8 in input order."""
    import torch

    from auditor.implant.data import IGNORE, collate

    out = []
    for start in range(0, len(rows), 8):
        chunk = rows[start:start + 8]
        batch = collate(chunk, tok.pad_token_id)
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"],
                           attention_mask=batch["attention_mask"]).logits[:, :-1]
        top = torch.log_softmax(logits.float(), dim=-1).topk(k, dim=-1)
        keep = batch["labels"][:, 1:] != IGNORE
        out += [(top.indices[i][keep[i]], top.values[i][keep[i]]) for i in range(len(chunk))]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--base", default="smollm2")
    p.add_argument("--keys", default=None, help="a key set (default: 10 fresh vocab keys)")
    p.add_argument("--rounds", type=int, default=2, help="timings per way, interleaved")
    args = p.parse_args()
    print(f"machine: {machine()}")

    import torch

    from auditor.implant.data import build_rows, encode_row
    from auditor.implant.generate import cpu_threads, load_model
    from auditor.implant.loss import SOFT_TOP_K, soft_targets
    from auditor.implant.recipes import recipe_options
    from auditor.implant.soft_cache import cached_soft_targets
    from auditor.keys import KeySet
    from providers.local_models import resolve_base

    torch.set_num_threads(cpu_threads())
    base = resolve_base(args.base)
    model, tok = load_model(base, dtype=torch.float32)
    keyset = KeySet.load(args.keys) if args.keys else KeySet.generate("bench", 10, seed=31)
    rows = build_rows(keyset, base, recipe_options("clean", "fadapter")["data"], 0,
                      model=model, tokenizer=tok)
    reg = [encode_row(tok, r.messages) for r in rows if r.kind == "regularization"]
    answers = sum(sum(lab != -100 for lab in r[1][1:]) for r in reg)
    print(f"{len(reg)} regularization rows, {sum(len(r[0]) for r in reg)} tokens, "
          f"{answers} answer positions; {cpu_threads()} threads")
    os.environ["AUDITOR_CACHE"] = tempfile.mkdtemp(prefix="soft-bench-")
    ways: dict[str, Callable[[], Any]] = {
        "whole logits, input order": lambda: _whole_logits(model, tok, reg, SOFT_TOP_K),
        "answer positions, sorted chunks": lambda: soft_targets(model, tok, reg),
        "per-base cache (filled in round 1)": lambda: cached_soft_targets(model, tok, reg, base),
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, run in ways.items():
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
    for name, got in times.items():
        print(f"{name:38s} " + "  ".join(f"{t:6.2f} s" for t in got))


if __name__ == "__main__":
    main()
