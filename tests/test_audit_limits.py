"""Per-endpoint limits: concurrency, requests per minute, query budget, retries recorded."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from auditor.audit import AuditResult, run_audit
from auditor.evidence import EvidenceStore
from auditor.keys import KeySet
from auditor.plan import CampaignSettings, EndpointConfig, build_plan
from auditor.ratelimit import RateLimiter
from auditor.retry import RetryPolicy
from tests import fakes_behaviour as fb
from tests.fakeserver import FakeLLMServer, FakeReply, FakeRequest, Responder, openai_error

FAST = RetryPolicy(max_attempts=4, base_delay_s=0.01, max_delay_s=0.05, attempt_timeout_s=5.0,
                   deadline_s=20.0)


async def _audit(tmp_path: Path, responder: Responder, *, concurrency: int = 4,
                 rpm: float | None = None, settings: CampaignSettings | None = None,
                 ) -> tuple[AuditResult, FakeLLMServer, EvidenceStore]:
    ks = KeySet.generate("lim", 6, seed=13)
    store = EvidenceStore(tmp_path / "ev.sqlite")
    with FakeLLMServer(responder) as srv:
        ep = EndpointConfig("ep", "compat:fake-model", base_url=srv.url + "/v1",
                            concurrency=concurrency, rpm=rpm)
        plan = build_plan("a-l", ep, ks, "k.json", settings or CampaignSettings(sequential=False))
        store.create_audit(plan.audit_id, ep.name, plan.to_dict())
        result = await run_audit(plan, ks, store, policy=FAST)
    return result, srv, store


async def test_concurrency_is_bounded_per_endpoint(tmp_path: Path) -> None:
    in_flight, peak = 0, 0
    inner = fb.vanilla()

    async def counting(req: FakeRequest) -> FakeReply:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        reply = inner(req)
        assert isinstance(reply, FakeReply)
        return reply

    result, srv, _ = await _audit(tmp_path, counting, concurrency=3)
    assert result.status == "completed" and len(srv.requests) == 18
    assert peak == 3


async def test_requests_per_minute_spaces_request_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The k-th request starts no sooner than k intervals after the first. Timed where the
    client starts it (the limiter let it through): arrival times at the server carry
    loopback delays, and on a busy machine one late arrival shortened the next gap."""
    starts: list[float] = []
    through = RateLimiter.acquire

    async def timed(self: RateLimiter) -> None:
        await through(self)
        starts.append(time.monotonic())

    monkeypatch.setattr(RateLimiter, "acquire", timed)
    result, srv, _ = await _audit(tmp_path, fb.vanilla(), rpm=600,  # one per 0.1 s
                                  settings=CampaignSettings(sequential=False, max_queries=6))
    assert result.queries == 6 and len(srv.requests) == len(starts) == 6
    starts.sort()
    early = [k for k, t in enumerate(starts) if t < starts[0] + 0.1 * k - 0.02]
    assert early == []  # without the limit all six start within a few milliseconds


async def test_budget_caps_queries_and_retries_are_recorded(tmp_path: Path) -> None:
    calls = 0
    inner = fb.vanilla()

    def flaky(req: FakeRequest) -> FakeReply:  # every other request fails with 503
        nonlocal calls
        calls += 1
        if calls % 2:
            return openai_error(503, "busy")
        reply = inner(req)
        assert isinstance(reply, FakeReply)
        return reply

    result, srv, store = await _audit(
        tmp_path, flaky, concurrency=1,
        settings=CampaignSettings(sequential=False, max_queries=5))
    assert result.status == "completed" and result.queries == 5
    recs = store.records("a-l")
    assert len(recs) == len(srv.requests) == 10  # each query: one 503, then success
    assert [r["attempt"] for r in recs[:2]] == [1, 2]
    assert [(r["final"], r["outcome"], r["error_status"]) for r in recs[:2]] == \
        [(False, "error", 503), (True, "ok", None)]
    assert store.verify("a-l").ok
