"""Power and false-claim rate of the ownership test: exact figures plus a simulation.

Run: .venv/bin/python bench/power.py [--endpoints 1000] [--seed 1]

Prints (1) exact power of the sequential e-process and of the fixed exact binomial test
by key queries, FSR and null rate p0; (2) a Monte-Carlo run of the full pipeline
(auditor.scoring.analyze on synthetic evidence) for fingerprinted and null endpoints;
(3) the machine it ran on. The "queries" counted are key queries; p0 is reached by a
hit-free baseline of decoys whose size is printed next to it.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from auditor import stats
from auditor.scoring import AnalysisSettings, analyze
from bench.machine import machine

ALPHA = 0.01
FSRS = (0.3, 0.5, 0.75, 1.0)
P0S = (0.001, 0.01, 0.025, 0.05)
THRESHOLD = math.log(1.0 / ALPHA)  # log E at which the sequential test claims




def exact_tables() -> None:
    print(f"Exact power at alpha = {ALPHA} (sequential e-process | fixed binomial)")
    print(f"{'p0':>7} {'decoys':>7} {'FSR':>5} {'power@20':>17} {'power@40':>17} "
          f"{'queries for 0.99':>17} {'mean stop@40':>13}")
    for p0 in P0S:
        for fsr in FSRS:
            curve = stats.sequential_power_curve(40, fsr, ALPHA, p0)
            mean_stop = sum(1.0 - (curve[t - 1] if t else 0.0) for t in range(40))
            need_s = stats.queries_needed(fsr, ALPHA, p0)
            need_f = stats.queries_needed(fsr, ALPHA, p0, sequential=False)
            print(f"{p0:>7g} {stats.baseline_needed(p0):>7} {fsr:>5g} "
                  f"{curve[19]:>8.4f}|{stats.power_binomial(20, fsr, ALPHA, p0):<8.4f} "
                  f"{curve[39]:>8.4f}|{stats.power_binomial(40, fsr, ALPHA, p0):<8.4f} "
                  f"{need_s!s:>8}|{need_f!s:<8} {mean_stop:>13.1f}")


def endpoint_records(rng: random.Random, n_keys: int, key_rate: float, n_decoys: int,
                     decoy_rate: float) -> list[dict[str, Any]]:
    """Final records in a random order (only the fields analyze reads)."""
    rows = [("key", f"k{i:03d}", key_rate) for i in range(n_keys)]
    rows += [("decoy", f"d{i:03d}", decoy_rate) for i in range(n_decoys)]
    rng.shuffle(rows)
    return [{"seq": seq, "category": cat, "prompt_id": pid, "sample_index": 0, "final": True,
             "outcome": "ok", "hit": rng.random() < rate, "refused": False}
            for seq, (cat, pid, rate) in enumerate(rows, start=1)]


def simulate(endpoints: int, seed: int) -> None:
    rng = random.Random(seed)
    n_keys, n_decoys = 40, stats.baseline_needed(0.01)
    print(f"\nSimulated full pipeline: {endpoints} endpoints each, {n_keys} key queries + "
          f"{n_decoys} decoys, alpha = {ALPHA}, sequential (claim at any time)")
    for label, key_rate, decoy_rate in (("fingerprinted FSR 0.3", 0.3, 0.0),
                                        ("fingerprinted FSR 0.5", 0.5, 0.0),
                                        ("null, no chance hits", 0.0, 0.0),
                                        ("null, hits at 1%", 0.01, 0.01)):
        t0 = time.perf_counter()
        owned = stops = 0
        for _ in range(endpoints):
            a = analyze(endpoint_records(rng, n_keys, key_rate, n_decoys, decoy_rate),
                        AnalysisSettings(alpha=ALPHA))
            owned += a.verdict == "OWNED"
            stops += next((t for t, _, lv in a.trajectory if lv >= THRESHOLD), n_keys)
        print(f"  {label:<24} OWNED {owned / endpoints:7.4f}  mean key queries to stop "
              f"{stops / endpoints:5.1f}  ({time.perf_counter() - t0:.1f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoints", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(f"machine: {machine()}\n")
    exact_tables()
    simulate(max(1, min(args.endpoints, 100_000)), args.seed)
    need = stats.queries_needed(0.3, ALPHA, 0.01)
    pw = stats.power_sequential(40, 0.3, ALPHA, 0.01)
    print(f"\nheadline: FSR 0.3, alpha {ALPHA}, p0 0.01 ({stats.baseline_needed(0.01)} hit-free "
          f"decoys): power {pw:.4f} with 40 key queries; 0.99 reached at {need} queries")


if __name__ == "__main__":
    main()
