"""Fingerprint strength, in the layout of the paper's Table 5.

One row per implanted model: FSR before, FSR after user fine-tuning on each bundled user set
(programmatic tasks, templated chat, both mixed) with each key's exact chance to fire in one
t=0.7 sample after it (weakest and mean: finer than FSR on a few keys), and the ordinary and
near-miss false-trigger rates of the model as published. For embedding-only and F-Adapter
models also FSR and the weakest key's fire chance with only the tuned model's input embeddings,
inside the published model (the paper's white-box check; auditor/implant/transplant.py).

    .venv/bin/python bench/strength.py --model models/demo --keys keys/demo.json \\
        [--adapter models/demo.fadapter.safetensors] [--tuning user-sft] [--rows 1000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import machine, table_console  # noqa: E402

SETS = ("tasks", "chat", "mixed")


def measure(args: argparse.Namespace, model: Path) -> dict[str, Any]:
    from auditor.implant import fadapter
    from auditor.implant.generate import load_model
    from auditor.implant.margin import fire_probs
    from auditor.implant.robustness import in_lookup, user_finetune
    from auditor.implant.transplant import with_embeddings_from
    from auditor.implant.verify import check_local, fsr_greedy
    from auditor.keys import KeySet

    keyset = KeySet.load(args.keys)
    before = check_local(
        model,
        keyset,
        n_controls=args.controls,
        n_ordinary=args.ordinary,
        samples=0,
        adapter=args.adapter,
    )
    row: dict[str, Any] = {
        "model": str(model),
        "before": before.fsr_greedy,
        "ordinary": before.ordinary_false_trigger,
        "nearmiss": before.nearmiss_false_trigger,
        "after": {},
        "fire_after": {},  # (weakest, mean) exact t=0.7 fire chance after tuning
        "published_layers": {},  # (FSR, weakest fire chance): tuned lookup, published layers
    }
    lookup = in_lookup(model, args.adapter)  # embedding-only or F-Adapter
    with tempfile.TemporaryDirectory(prefix="strength-") as tmp:
        for name in args.sets.split(","):
            tuned = user_finetune(
                model,
                Path(tmp) / name,
                args.tuning,
                epochs=args.epochs,
                rows=args.rows,
                subset=name,
                progress=args.progress,
            )
            m, tok = load_model(tuned)
            if args.adapter is not None:
                fadapter.load_into(m, args.adapter)
            row["after"][name] = fsr_greedy(m, tok, keyset)
            fire = fire_probs(m, tok, keyset, temperature=0.7)
            row["fire_after"][name] = (min(fire), sum(fire) / len(fire))
            del m
            if lookup:  # the owner's own layers, the user's lookup
                m, tok = with_embeddings_from(model, tuned, args.adapter)
                fire = fire_probs(m, tok, keyset, temperature=0.7)
                row["published_layers"][name] = (fsr_greedy(m, tok, keyset), min(fire))
                del m
    return row


def print_table(rows: list[dict[str, Any]], sets: list[str], tuning: str) -> None:
    from rich.table import Table

    def pct(x: float) -> str:
        return f"{100 * x:.1f}"

    t = Table(title=f"fingerprint strength (%), user fine-tuning: {tuning}")
    lookup = any(r["published_layers"] for r in rows)  # embedding-only or F-Adapter rows
    for col in (
        "model",
        "FSR pre",
        *[f"FSR post {s}" for s in sets],
        *[f"t=0.7 fire post {s}: weakest / mean" for s in sets],
        "ordinary FT",
        "near-miss FT",
        *[f"published layers post {s}: FSR / weakest" for s in sets if lookup],
    ):
        t.add_column(col)
    for r in rows:
        t.add_row(
            r["model"],
            pct(r["before"]),
            *[pct(r["after"][s]) for s in sets],
            *[" / ".join(pct(x) for x in r["fire_after"][s]) for s in sets],
            pct(r["ordinary"]),
            pct(r["nearmiss"]),
            *[" / ".join(pct(x) for x in r["published_layers"][s])
              if s in r["published_layers"] else "-" for s in sets if lookup],
        )
    table_console().print(t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", type=Path, action="append", required=True)
    p.add_argument("--keys", type=Path, required=True)
    p.add_argument("--adapter", type=Path, default=None)
    p.add_argument("--tuning", choices=("user-sft", "user-lora"), default="user-sft")
    p.add_argument("--sets", default=",".join(SETS))
    p.add_argument("--rows", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--controls", type=int, default=100)
    p.add_argument("--ordinary", type=int, default=100)
    p.add_argument("--progress", action="store_true")
    args = p.parse_args()
    print(f"machine: {machine()}")
    rows = [measure(args, m) for m in args.model]
    print_table(rows, args.sets.split(","), args.tuning)


if __name__ == "__main__":
    main()
