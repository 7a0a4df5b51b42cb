"""Audit engine throughput against a stub server with fixed latency L and ample capacity.

At concurrency C the ceiling is C/L requests per second. Prints, in one run:
  * the engine (evidence on: every attempt hash-chained and fsync-committed) vs C/L,
  * a plain `openai` SDK async loop with a semaphore and no logging vs C/L,
  * the engine vs that plain loop.
The stub server runs in a child process (tests/fakeserver.py) so it does not share the GIL.

    .venv/bin/python bench/throughput.py [--concurrency 64] [--latency 0.2] [--rounds 12]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.machine import machine  # noqa: E402

SERVE = """
import sys, time
from tests.fakeserver import FakeLLMServer, echo_responder
srv = FakeLLMServer(echo_responder("A plain answer of a few words."),
                    latency_s=float(sys.argv[1])).start()
print(srv.url, flush=True)
sys.stdin.read()
srv.stop()
"""




async def engine_run(url: str, concurrency: int, queries_per_slot: int,
                     store_dir: Path) -> tuple[float, int, int]:
    """Seconds, queries and commits of one audit through the engine, evidence on."""
    from auditor.audit import preload, run_audit
    from auditor.evidence import EvidenceStore
    from auditor.keys import KeySet
    from auditor.plan import CampaignSettings, EndpointConfig, build_plan
    from auditor.writer import GroupWriter

    total = concurrency * queries_per_slot
    keys = max(1, total // 9)  # keys + controls + decoys, 3 samples each
    ks = KeySet.generate("bench", keys, seed=1)
    settings = CampaignSettings(samples=3, sequential=False, max_queries=total)
    ep = EndpointConfig("stub", "openai:stub-model", base_url=url + "/v1",
                        concurrency=concurrency)
    plan = build_plan("bench", ep, ks, "bench.json", settings)
    preload()
    with EvidenceStore(store_dir / "bench.sqlite") as store:
        store.create_audit(plan.audit_id, ep.name, plan.to_dict())
        writer = GroupWriter(store)
        t0 = time.perf_counter()
        result = await run_audit(plan, ks, store, writer=writer)
        elapsed = time.perf_counter() - t0
        assert result.status == "completed", result.error
        assert store.verify(plan.audit_id).ok
    return elapsed, result.queries, writer.commits


async def sdk_run(url: str, concurrency: int, queries_per_slot: int) -> tuple[float, int]:
    """Seconds and requests of a bare openai-SDK loop: semaphore, no retries, no logging."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url + "/v1", api_key="bench", max_retries=0)
    sem = asyncio.Semaphore(concurrency)
    total = concurrency * queries_per_slot

    async def one(i: int) -> None:
        async with sem:
            await client.chat.completions.create(
                model="stub-model", messages=[{"role": "user", "content": f"question {i}"}],
                max_tokens=64, temperature=0.0)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(total)))
    elapsed = time.perf_counter() - t0
    await client.close()
    return elapsed, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--rounds", type=int, default=12, help="queries per concurrency slot")
    args = ap.parse_args()
    os.environ.setdefault("OPENAI_API_KEY", "bench-not-a-key")
    server = subprocess.Popen([sys.executable, "-c", SERVE, str(args.latency)], cwd=REPO,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        ceiling = args.concurrency / args.latency
        asyncio.run(sdk_run(url, args.concurrency, 1))  # warm both paths
        with tempfile.TemporaryDirectory() as tmp:
            e_s, e_n, commits = asyncio.run(engine_run(url, args.concurrency, args.rounds,
                                                       Path(tmp)))
        s_s, s_n = asyncio.run(sdk_run(url, args.concurrency, args.rounds))
    finally:
        if server.stdin is not None:
            server.stdin.close()
        server.wait(timeout=10)
    e_rps, s_rps = e_n / e_s, s_n / s_s
    print(f"machine: {machine()}")
    print(f"C={args.concurrency}, L={args.latency * 1000:.0f} ms: ceiling C/L = "
          f"{ceiling:.0f} req/s")
    print(f"engine, evidence on: {e_n} queries in {e_s:.2f} s = {e_rps:.0f} req/s "
          f"({e_n / max(commits, 1):.1f} records per fsync-commit)")
    print(f"plain openai SDK loop: {s_n} requests in {s_s:.2f} s = {s_rps:.0f} req/s")
    print(f"ratios: engine/(C/L) = {e_rps / ceiling:.2f}, SDK loop/(C/L) = "
          f"{s_rps / ceiling:.2f}, engine/SDK loop = {e_rps / s_rps:.2f}")


if __name__ == "__main__":
    main()
