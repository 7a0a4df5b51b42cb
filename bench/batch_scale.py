"""Batch isolation at scale: N latency-bound endpoints, then the same beside a 429-only one.

Prints the worst endpoint time of: one endpoint alone (solo), N-1 healthy endpoints
alone, and N-1 healthy endpoints beside one that answers only 429, with the ratios.
Fake endpoints run in this process (tests/fakeserver.py), so on a small machine the
N-endpoint runs also pay for N fake servers' CPU.

    .venv/bin/python bench/batch_scale.py [--endpoints 50] [--latency 1.0]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.machine import machine  # noqa: E402


def main() -> None:
    from auditor.keys import KeySet
    from auditor.plan import CampaignSettings
    from tests import fakes_behaviour as fb
    from tests.fakeserver import FakeReply, FakeRequest, Responder, openai_error
    from tests.test_batch import _durations, _run_batch, _servers

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--endpoints", type=int, default=50)
    ap.add_argument("--latency", type=float, default=1.0)
    args = ap.parse_args()
    ks = KeySet.generate("scale", 4, seed=9)
    settings = CampaignSettings(sequential=False, controls_per_key=0.5, decoys_per_key=0.5)
    inner = fb.fingerprinted(ks)

    async def slow(req: FakeRequest) -> FakeReply:
        reply = inner(req)
        assert isinstance(reply, FakeReply)
        reply.delay_s = args.latency
        return reply

    healthy = args.endpoints - 1
    bad: list[Responder] = [lambda req: openai_error(429, "slow down")]
    worst: dict[str, float] = {}
    runs: list[tuple[str, list[Responder]]] = [
        ("solo", [slow]), ("healthy alone", [slow] * healthy),
        ("beside 429", [slow] * healthy + bad)]
    with tempfile.TemporaryDirectory() as tmp:
        for label, responders in runs:
            with _servers(responders) as servers:
                done = _run_batch(Path(tmp), ks, servers, settings, store_name=f"{label}.db")
            times = _durations(done)
            ok = [times[d.plan.endpoint.name] for d in done if d.result.status == "completed"]
            worst[label] = max(ok)
            errors = sum(d.result.status == "error" for d in done)
            print(f"{label:>14}: {len(done)} endpoints, worst healthy {max(ok):.2f} s, "
                  f"{errors} ERROR")
    print(f"machine: {machine()}")
    print(f"ratios: beside-429 / healthy-alone = "
          f"{worst['beside 429'] / worst['healthy alone']:.2f}, "
          f"beside-429 / solo = {worst['beside 429'] / worst['solo']:.2f}")


if __name__ == "__main__":
    main()
