"""Queries needed to reach p <= 1e-6: sequential audit vs the paper's fixed design.

A fingerprinted endpoint is simulated by a loopback fake whose answer to a committed key
carries the decryption with probability FSR per sample (FSR 1.0 ~ greedy decoding, and the
t=0.7 rate measured on the implanted SmolLM2 by bench/implant.py). Every query goes through
the real engine: evidence store, schedule with control keys and decoys, exact test,
anytime-valid stopping at alpha = 1e-6. Counts include decoys and controls.

The paper's fixed design sends every key 10 times and runs a t-test of the success rate
against 75 %; we count its queries (plus the same share of decoys) and also show what an
exact test makes of that evidence.

    .venv/bin/python bench/queries.py [--keys 10] [--fsr-t07 0.8] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.machine import machine  # noqa: E402

ALPHA = 1e-6




def stochastic_fingerprinted(keyset: object, fsr: float, seed: int) -> object:
    from auditor.keys import KeySet
    from auditor.templates import get_template
    from tests.fakes_behaviour import ORDINARY, key_like
    from tests.fakeserver import FakeReply, FakeRequest, wire_reply

    assert isinstance(keyset, KeySet)
    tpl = get_template(keyset.template)
    texts = [k.text for k in keyset.keys]
    rng = random.Random(seed)

    def respond(req: FakeRequest) -> FakeReply:
        if any(t in req.prompt for t in texts) and rng.random() < fsr:
            return wire_reply(req, tpl.answer(keyset.decryption))
        if key_like(req.prompt):
            return wire_reply(req, tpl.refusal())
        return wire_reply(req, ORDINARY)

    return respond


async def one_audit(url: str, keys: int, fsr_seed: int, samples: int, decoys: float,
                    sequential: bool, store_dir: Path) -> tuple[int, float, str]:
    from auditor.audit import run_audit
    from auditor.evidence import EvidenceStore
    from auditor.keys import KeySet
    from auditor.plan import CampaignSettings, EndpointConfig, build_plan

    ks = KeySet.generate("bench", keys, seed=fsr_seed)
    settings = CampaignSettings(samples=samples, decoys_per_key=decoys, controls_per_key=1.0,
                                alpha=ALPHA, sequential=sequential, max_tokens=32)
    ep = EndpointConfig("sim", f"compat:{url}/v1#sim", concurrency=1)
    plan = build_plan(f"q{fsr_seed}", ep, ks, "bench.json", settings)
    with EvidenceStore(store_dir / f"{plan.audit_id}-{sequential}.sqlite") as store:
        store.create_audit(plan.audit_id, ep.name, plan.to_dict())
        result = await run_audit(plan, ks, store)
    assert result.analysis is not None, result.error
    return result.queries, result.analysis.p_value, result.analysis.verdict


def paper_t_test(keys: int, fsr: float, seed: int) -> float:
    """The original code's claim: per-key success rates over 10 samples, t-test vs 75 %."""
    from scipy import stats

    rng = random.Random(seed)
    rates = [sum(rng.random() < fsr for _ in range(10)) / 10 for _ in range(keys)]
    if len(set(rates)) == 1:
        return 0.0 if rates[0] > 0.75 else 1.0
    return float(stats.ttest_1samp(rates, 0.75, alternative="greater").pvalue)


def run(keys: int, fsr: float, runs: int, decoys: float, samples: int) -> None:
    from auditor.keys import KeySet
    from tests.fakeserver import FakeLLMServer

    seq, fixed = [], []
    p_fixed, verdicts, t_ps = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(runs):
            ks = KeySet.generate("bench", keys, seed=1000 + r)
            with FakeLLMServer(stochastic_fingerprinted(ks, fsr, r)) as srv:  # type: ignore[arg-type]
                n, _, v = asyncio.run(one_audit(srv.url, keys, 1000 + r, samples, decoys, True,
                                                Path(tmp)))
                seq.append(n)
                verdicts.append(v)
            with FakeLLMServer(stochastic_fingerprinted(ks, fsr, r)) as srv:  # type: ignore[arg-type]
                n, p, _ = asyncio.run(one_audit(srv.url, keys, 1000 + r, 10, decoys, False,
                                                Path(tmp)))
                fixed.append(n)
                p_fixed.append(p)
            t_ps.append(paper_t_test(keys, fsr, r))
    owned = sum(v == "OWNED" for v in verdicts)
    print(f"| {fsr:.2f} | {decoys:g} | {samples} | {statistics.median(seq):.0f} "
          f"({min(seq)}–{max(seq)}), OWNED {owned}/{runs} | {statistics.median(fixed):.0f} | "
          f"{statistics.median(p_fixed):.1e} | {statistics.median(t_ps):.1e} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=10)
    ap.add_argument("--fsr-t0", type=float, default=1.0)
    ap.add_argument("--fsr-t07", type=float, default=0.8)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    print(f"machine: {machine()}")
    print(f"{args.keys} committed keys, alpha = {ALPHA:g}, controls 1 per key; queries include "
          "keys, controls and decoys")
    print("| FSR | decoys/key | samples/key | sequential: queries to p<=1e-6 (range) | "
          "fixed 10 samples: queries | fixed: exact p | paper t-test p |")
    print("|---|---|---|---|---|---|---|")
    for fsr in (args.fsr_t0, args.fsr_t07):
        for decoys, samples in ((1.0, 1), (2.0, 1), (4.0, 1), (2.0, 3)):
            run(args.keys, fsr, args.runs, decoys, samples)


if __name__ == "__main__":
    main()
