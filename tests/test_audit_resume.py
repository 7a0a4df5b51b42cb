"""Interrupt (task cancel, like Ctrl-C), a torn last record, then resume: nothing lost or resent."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections import Counter
from pathlib import Path

from auditor.audit import run_audit
from auditor.evidence import EvidenceStore
from auditor.keys import KeySet
from auditor.plan import CampaignSettings, EndpointConfig, Plan, build_plan
from auditor.retry import RetryPolicy
from tests import fakes_behaviour as fb
from tests.fakeserver import FakeLLMServer, FakeReply, FakeRequest

FAST = RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.05, attempt_timeout_s=5.0,
                   deadline_s=20.0)


def _forge_torn_record(path: Path, audit_id: str, query: dict[str, object]) -> None:
    """Append a row claiming ``query`` finished, whose hash does not match (a torn write)."""
    db = sqlite3.connect(path, isolation_level=None)
    last = db.execute("SELECT seq, hash FROM records WHERE audit_id = ? ORDER BY seq DESC "
                      "LIMIT 1", (audit_id,)).fetchone()
    db.execute(
        "INSERT INTO records (seq, prev_hash, ts, audit_id, endpoint_id, query_id, category, "
        "prompt_id, sample_index, attempt, final, outcome, request_sha256, response_sha256, "
        "hash) VALUES (?, ?, 'x', ?, 'suspect', ?, ?, ?, 0, 1, 1, 'ok', 'x', 'x', ?)",
        (last[0] + 1, last[1], audit_id, query["query_id"], query["category"],
         query["prompt_id"], "0" * 64))
    db.close()


async def test_interrupted_audit_resumes_after_quarantine(tmp_path: Path) -> None:
    ks = KeySet.generate("r", 8, seed=21)
    inner = fb.fingerprinted(ks)

    async def slow(req: FakeRequest) -> FakeReply:
        reply = inner(req)
        assert isinstance(reply, FakeReply)
        reply.delay_s = 0.05
        return reply

    store = EvidenceStore(tmp_path / "ev.sqlite")
    with FakeLLMServer(slow) as first:
        ep = EndpointConfig("suspect", "compat:fake-model", base_url=first.url + "/v1",
                            concurrency=2)
        plan = build_plan("a-r", ep, ks, "k.json", CampaignSettings(sequential=False))
        store.create_audit(plan.audit_id, ep.name, plan.to_dict())
        task = asyncio.create_task(run_audit(plan, ks, store, policy=FAST))
        for _ in range(500):  # bounded wait: at most ~10 s
            await asyncio.sleep(0.02)
            if len(store.completed_queries("a-r")) >= 8:
                break
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert store.audit("a-r").status == "interrupted"
    done_before = store.completed_queries("a-r")
    assert 8 <= len(done_before) < len(plan.queries)
    pending = next(q for q in plan.queries if q.query_id not in done_before)
    _forge_torn_record(tmp_path / "ev.sqlite", "a-r",
                       {"query_id": pending.query_id, "category": pending.category,
                        "prompt_id": pending.prompt_id})
    assert not store.verify("a-r").ok

    with FakeLLMServer(inner) as second:
        resumed_plan = Plan.from_dict(store.audit("a-r").plan)
        resumed_plan.endpoint = EndpointConfig("suspect", "compat:fake-model",
                                               base_url=second.url + "/v1", concurrency=2)
        result = await run_audit(resumed_plan, ks, store, policy=FAST)
    assert len(result.quarantined) == 1
    assert [q.seq for q in result.quarantined] == [q.seq for q in store.quarantined("a-r")]
    assert result.status == "completed" and result.verdict == "OWNED"
    text_of = {q.query_id: plan.prompts[q.prompt_id][-1]["content"] for q in plan.queries}
    resent = Counter(r.prompt for r in second.requests)
    assert not {text_of[q] for q in done_before} & set(resent)  # completed: never again
    assert text_of[pending.query_id] in resent  # the torn record's query was sent again
    finals = Counter(r["query_id"] for r in store.records("a-r") if r["final"])
    assert len(finals) == len(plan.queries) and set(finals.values()) == {1}
    assert store.verify("a-r").ok
    store.close()
