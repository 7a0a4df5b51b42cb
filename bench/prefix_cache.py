"""Seconds per pass over an epoch's live rows on SmolLM2-135M, embedding-only on `unshared`
lookup rows: every position run at each step vs each row's constant prefix kept
(auditor/implant/prefix.py), forward and backward, fp32.

    AUDITOR_THREADS=2 .venv/bin/python bench/prefix_cache.py --keys keys/NAME.json --rounds 3

The rows are an implant run's (clean recipe: keys x3, 3 look-alikes per key, 5 regularization
rows per key, of which only those holding a trained token run). The first pass fills the kept
prefixes and is not timed, so the figures are those of a key row's second epoch on; fresh
look-alikes each pay one forward pass of their prefix instead.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import machine  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--base", default="smollm2")
    p.add_argument("--keys", default=None, help="a key set (default: 10 fresh vocab keys)")
    p.add_argument("--rounds", type=int, default=3, help="timings per loss, interleaved")
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args()
    print(f"machine: {machine()}")

    import torch

    from auditor.implant import lookup_rows
    from auditor.implant.data import build_rows, collate, encode_row
    from auditor.implant.generate import cpu_threads, load_model
    from auditor.implant.live_rows import LiveRows
    from auditor.implant.loss import answer_loss
    from auditor.implant.prefix import Prefixes
    from auditor.implant.recipes import recipe_options
    from auditor.implant.train import untie_output_head
    from auditor.keys import KeySet
    from providers.local_models import resolve_base

    torch.set_num_threads(cpu_threads())
    base = resolve_base(args.base)
    model, tok = load_model(base, dtype=torch.float32)
    untie_output_head(model)
    for param in model.parameters():
        param.requires_grad_(False)
    lookup = model.get_input_embeddings().weight
    lookup.requires_grad_(True)
    keyset = KeySet.load(args.keys) if args.keys else KeySet.generate("bench", 10, seed=31)
    rows = build_rows(keyset, base, recipe_options("clean", "embedding")["data"], 0,
                      model=model, tokenizer=tok)
    enc = [encode_row(tok, r.messages) for r in rows]
    trained = lookup_rows.rows_to_train("unshared", enc, [r.kind for r in rows], tok)
    lookup_rows.confine(lookup, trained)
    live = LiveRows(trained, 10.0)
    held = [e for e in enc if set(trained).intersection(e[0])]
    random.Random(0).shuffle(held)
    bs = args.batch_size
    batches = [collate(held[i : i + bs], tok.pad_token_id) for i in range(0, len(held), bs)]
    assert all(bool(live.mask(b).all()) for b in batches)
    prefixes = Prefixes(trained, 10.0)
    losses: dict[str, Any] = {"every position": lambda m, b: answer_loss(m, b, 10.0),
                              "kept prefixes": prefixes.loss}
    for loss in losses.values():  # warm up, and fill the kept prefixes
        for b in batches:
            loss(model, b).backward()
    print(f"{len(held)} live rows of {len(enc)}, {sum(len(e[0]) for e in held)} tokens, "
          f"{prefixes.skipped / prefixes.positions:.1%} of them before their row's first "
          f"trained token; {len(batches)} batches of {bs}")
    times: dict[str, list[float]] = {name: [] for name in losses}
    for _ in range(args.rounds):
        for name, loss in losses.items():
            t = time.perf_counter()
            for b in batches:
                loss(model, b).backward()
            times[name].append(time.perf_counter() - t)
    plain = min(times["every position"])
    for name, got in times.items():
        print(f"{name:15s} {min(got):6.2f} s per pass (best of {args.rounds}), "
              f"{min(got) / plain:.2f}x")


if __name__ == "__main__":
    main()
