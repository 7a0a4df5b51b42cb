"""Batch at scale: isolation beside a 429-only endpoint, and one batch vs single audits.

Default (isolation): the worst endpoint time of one endpoint alone (solo), N-1 healthy
endpoints alone, and N-1 healthy endpoints beside one that answers only 429, with the ratios;
the endpoints are fake servers in a separate process.
`--stubs N`: N stub endpoints audited in one batch, against the same N audited one after
another (in-process, so process start-up is not counted for the single audits).
With --stubs the fake endpoints run in this process (tests/fakeserver.py), so the batch also
pays for the fake servers' CPU.

    .venv/bin/python bench/batch_scale.py [--endpoints 50] [--latency 1.0]
    .venv/bin/python bench/batch_scale.py --stubs 1000 [--latency 0.05]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.machine import machine  # noqa: E402

# The isolation run's endpoints live in another process, as remote endpoints would: the
# auditor process then pays only for its own work (no GIL shared with 50 fake servers).
SERVE = """
import sys
from auditor.keys import KeySet
from tests import fakes_behaviour as fb
from tests.fakeserver import FakeLLMServer, openai_error
n, latency = int(sys.argv[1]), float(sys.argv[2])
inner = fb.fingerprinted(KeySet.generate("scale", 4, seed=9))
async def slow(req):
    reply = inner(req)
    reply.delay_s = latency
    return reply
servers = [FakeLLMServer(slow).start() for _ in range(n)]
servers.append(FakeLLMServer(lambda req: openai_error(429, "slow down")).start())
print(" ".join(s.url for s in servers), flush=True)
sys.stdin.read()
for s in servers:
    s.stop()
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--endpoints", type=int, default=50)
    ap.add_argument("--latency", type=float, default=None,
                    help="seconds per answer (default 1.0; 0.05 with --stubs)")
    ap.add_argument("--stubs", type=int, default=None, help="one batch vs N single audits")
    args = ap.parse_args()
    if args.stubs:
        stubs(args.stubs, 0.05 if args.latency is None else args.latency)
        return
    isolation(args.endpoints, 1.0 if args.latency is None else args.latency)


def isolation(endpoints: int, latency: float) -> None:
    from auditor.keys import KeySet
    from auditor.plan import CampaignSettings
    from tests.test_batch import _durations, _run_batch

    ks = KeySet.generate("scale", 4, seed=9)
    settings = CampaignSettings(sequential=False, controls_per_key=0.5, decoys_per_key=0.5)
    healthy = endpoints - 1
    server = subprocess.Popen([sys.executable, "-c", SERVE, str(healthy), str(latency)],
                              cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    worst: dict[str, float] = {}
    try:
        assert server.stdout is not None
        urls = server.stdout.readline().split()
        slow, bad = urls[:healthy], urls[healthy:]
        runs = [("solo", slow[:1]), ("healthy alone", slow), ("beside 429", slow + bad)]
        with tempfile.TemporaryDirectory() as tmp:
            for label, targets in runs:
                done = _run_batch(Path(tmp), ks, targets, settings, store_name=f"{label}.db")
                times = _durations(done)
                ok = [times[d.plan.endpoint.name] for d in done if d.result.status == "completed"]
                worst[label] = max(ok)
                errors = sum(d.result.status == "error" for d in done)
                print(f"{label:>14}: {len(done)} endpoints, worst healthy {max(ok):.2f} s, "
                      f"{errors} ERROR")
    finally:
        if server.stdin is not None:
            server.stdin.close()
        server.wait(timeout=30)
    print(f"machine: {machine()}")
    print(f"ratios: beside-429 / healthy-alone = "
          f"{worst['beside 429'] / worst['healthy alone']:.2f}, "
          f"beside-429 / solo = {worst['beside 429'] / worst['solo']:.2f}")


def stubs(n: int, latency: float) -> None:
    from auditor.batch import BatchEntry, prepare, run_plans
    from auditor.evidence import EvidenceStore
    from auditor.finish import finalize
    from auditor.keys import KeySet
    from auditor.plan import CampaignSettings, EndpointConfig
    from tests import fakes_behaviour as fb
    from tests.fakeserver import FakeReply, FakeRequest
    from tests.test_batch import FAST, _servers

    ks = KeySet.generate("scale", 4, seed=9)
    settings = CampaignSettings(sequential=False, controls_per_key=0.5, decoys_per_key=0.5)
    inner = fb.fingerprinted(ks)

    async def slow(req: FakeRequest) -> FakeReply:
        reply = inner(req)
        assert isinstance(reply, FakeReply)
        reply.delay_s = latency
        return reply

    def audit(store: EvidenceStore, entries: list[Any]) -> list[str]:
        plans = prepare(entries, {"k.json": ks}, settings, store)
        done = finalize(asyncio.run(run_plans(plans, store, policy=FAST)), store, 0.01, "holm")
        return [d.report.verdict if d.report else "?" for d in done]

    with _servers([slow]) as (srv,), tempfile.TemporaryDirectory() as tmp:
        # one server, a distinct URL per endpoint: no shared limits between the stubs
        entries = [BatchEntry(EndpointConfig(f"stub{i:04d}", "compat:fake-model",
                                             base_url=f"{srv.url}/e{i}/v1", concurrency=4),
                              "k.json") for i in range(n)]
        with EvidenceStore(Path(tmp) / "batch.db") as store:
            t0 = time.monotonic()
            batch = audit(store, entries)
            batch_s = time.monotonic() - t0
        with EvidenceStore(Path(tmp) / "single.db") as store:
            t0 = time.monotonic()
            single = [v for e in entries for v in audit(store, [e])]
            single_s = time.monotonic() - t0
    print(f"machine: {machine()}")
    print(f"{n} stub endpoints, {latency * 1000:.0f} ms per answer, 8 queries each "
          "(4 keys: too few to claim at alpha 0.01; the figure is wall time)")
    print(f"  one batch:      {batch_s:7.1f} s, verdicts {dict(Counter(batch))}")
    print(f"  single audits:  {single_s:7.1f} s, verdicts {dict(Counter(single))}")
    print(f"  single / batch: {single_s / batch_s:.1f}x")


if __name__ == "__main__":
    main()
