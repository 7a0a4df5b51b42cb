"""Seconds for each method to implant a tiny random Llama to FSR 100 % (the tests' setup).

The issue's target: under a minute per method on this CPU. Same model, keys and
hyperparameters as tests/test_implant_train.py; the implant stops at its first FSR-100 % check.

    AUDITOR_THREADS=1 .venv/bin/python bench/tiny_implant.py           # CI's thread count
    AUDITOR_THREADS=2 .venv/bin/python bench/tiny_implant.py --methods sft
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import machine, table_console  # noqa: E402

METHODS = ("sft", "lora", "embedding", "fadapter")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--methods", default=",".join(METHODS))
    args = p.parse_args()
    from rich.table import Table

    from auditor.keys import KeySet
    from tests.tiny_model import TINY_HPARAMS, implant_tiny, make_tiny_model

    print(f"machine: {machine()}")
    table = Table(title="tiny random Llama (2 layers, hidden 256): implant to FSR 100 %")
    for col in ("method", "seconds", "epochs (of most)", "steps", "FSR", "quick near-miss"):
        table.add_column(col)
    with tempfile.TemporaryDirectory(prefix="bench-tiny-") as work:
        os.environ["AUDITOR_CACHE"] = str(Path(work) / "cache")
        tiny = make_tiny_model(Path(work) / "tiny")
        keyset = KeySet.generate("tiny", 4, seed=11)
        for method in args.methods.split(","):
            t0 = time.monotonic()
            res = implant_tiny(tiny, keyset, method, Path(work) / method)
            most = TINY_HPARAMS[method]["epochs"]
            table.add_row(method, f"{time.monotonic() - t0:.1f}", f"{res.epochs} ({most})",
                          str(res.steps), f"{res.fsr:.0%}", f"{res.nearmiss_false_trigger:.0%}")
    table_console().print(table)


if __name__ == "__main__":
    main()
