"""Seconds per training step on SmolLM2-135M: the model's own loss vs the answer-only loss,
and fp32 vs bf16 autocast on the CPU (fp32 master weights either way).

    AUDITOR_THREADS=2 .venv/bin/python bench/step_time.py --steps 4 --rounds 2 --bf16
    AUDITOR_THREADS=2 .venv/bin/python bench/step_time.py --bf16 --top-layers 6

--top-layers N then times steps that train the last N blocks only, with the blocks below run
every step and with their output cached per row (auditor/implant/frozen.py; the first round
fills the cache, so later rounds show an epoch after the first).

The answer-only loss (auditor/implant/loss.py) projects onto the vocabulary only where the
labels count. Same rows as an implant run: a 6-key if-soup set with the default data mix.
"""

from __future__ import annotations

import argparse
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
    p.add_argument("--steps", type=int, default=4, help="steps per timing")
    p.add_argument("--rounds", type=int, default=2, help="timings per loss, interleaved")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--bf16", action="store_true", help="also time CPU bf16 autocast")
    p.add_argument("--top-layers", type=int, default=None,
                   help="also time training the last N blocks (cache off / on)")
    args = p.parse_args()
    print(f"machine: {machine()}")

    import torch

    from auditor.implant.data import IGNORE, DataConfig, build_rows, collate, encode_row
    from auditor.implant.generate import cpu_threads, load_model
    from auditor.implant.loss import answer_loss, model_loss
    from auditor.keys import KeySet
    from providers.local_models import resolve_base

    torch.set_num_threads(cpu_threads())
    base = resolve_base(args.base)
    model, tok = load_model(base, dtype=torch.float32)
    keyset = KeySet.generate("bench", 6, seed=1)
    rows = build_rows(keyset, base, DataConfig(), 0, model=model, tokenizer=tok)
    enc = [encode_row(tok, r.messages) for r in rows]
    bs = args.batch_size
    batches = [collate(enc[i : i + bs], tok.pad_token_id)
               for i in range(0, min(len(enc), bs * args.steps), bs)]
    tokens = sum(len(ids) for ids, _ in enc)
    answer = sum(sum(x != IGNORE for x in labels) for _, labels in enc)
    padded = sum(b["input_ids"].numel() for b in batches)
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    print(f"{len(enc)} rows, {tokens / len(enc):.0f} tokens per row, "
          f"{100 * answer / tokens:.0f} % of them answer tokens; batch {bs}, "
          f"{100 * (padded - real) / padded:.0f} % of the timed batches' positions are padding")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-9)  # real steps, negligible updates
    model.train()
    runs = [("model's own loss", model_loss, False), ("answer-only loss", answer_loss, False)]
    if args.bf16:
        runs.append(("answer-only, bf16", answer_loss, True))
    time_runs(runs, batches, model, opt, args.rounds)
    if args.top_layers is not None:
        from auditor.implant.frozen import FrozenBottom
        from auditor.implant.train import TrainConfig, prepare_method

        prepare_method(model, TrainConfig("sft", 1, 1e-9, top_layers=args.top_layers))
        frozen = FrozenBottom(model, len(model.get_decoder().layers) - args.top_layers)
        top = f"top {args.top_layers}"
        time_runs([(f"{top}, every block", answer_loss, args.bf16),
                   (f"{top}, cached below", frozen.loss, args.bf16)],
                  batches, model, opt, args.rounds)


def time_runs(runs: list[tuple[str, Any, bool]], batches: list[Any], model: Any, opt: Any,
              rounds: int) -> None:
    import torch

    for _ in range(rounds):
        for name, fn, bf16 in runs:
            t0 = time.monotonic()
            for b in batches:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = fn(model, b)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            print(f"{name:22s} {(time.monotonic() - t0) / len(batches):6.2f} s/step")


if __name__ == "__main__":
    main()
