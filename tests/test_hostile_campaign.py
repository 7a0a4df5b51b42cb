"""A batch of 12 endpoints, 1,080 queries, ~30 % of requests broken on the wire.

Every query must end in exactly one final record, nothing may be sent after a query's
success, every chain must verify, and the verdicts must equal a fault-free run of the same
fakes with the same plans.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from auditor.batch import run_plans
from auditor.evidence import EvidenceStore
from auditor.finish import Finished
from auditor.keys import KeySet
from auditor.plan import CampaignSettings, EndpointConfig, Plan, build_plan
from auditor.retry import RetryPolicy
from tests import fakes_behaviour as fb
from tests.fakeserver import FakeLLMServer, Responder
from tests.faults import FAULTS, SUCCESS_FAULTS, FaultInjector

pytestmark = pytest.mark.slow

KEYS = 30  # 30 keys + 30 controls + 30 decoys = 90 queries per endpoint
ENDPOINTS = 12
SPECS = ("compat", "openai", "anthropic")
BEHAVIOURS = ("fingerprinted", "vanilla", "filtering", "paper_reader")
# Faults are capped at 2 per prompt; 6 attempts leave room for a slow answer timing out.
POLICY = RetryPolicy(max_attempts=6, base_delay_s=0.01, max_delay_s=0.05,
                     retry_after_cap_s=5.0, attempt_timeout_s=4.0, deadline_s=60.0)


@dataclass
class Endpoint:
    name: str
    spec: str
    behaviour: str
    seed: str


def _responder(behaviour: str, keyset: KeySet) -> Responder:
    if behaviour == "fingerprinted":
        return fb.fingerprinted(keyset)
    if behaviour == "filtering":
        return fb.filtering(keyset)
    if behaviour == "paper_reader":
        return fb.paper_reader()
    return fb.vanilla()


def _endpoints() -> list[Endpoint]:
    return [Endpoint(f"ep{i:02d}", SPECS[i % len(SPECS)], BEHAVIOURS[i % len(BEHAVIOURS)],
                     f"{i:02d}" * 16) for i in range(ENDPOINTS)]


def _config(ep: Endpoint, url: str) -> EndpointConfig:
    if ep.spec == "anthropic":
        return EndpointConfig(ep.name, "anthropic:fake-claude", base_url=url, concurrency=6,
                              timeout_s=POLICY.attempt_timeout_s)
    if ep.spec == "openai":
        return EndpointConfig(ep.name, "openai:fake-gpt", base_url=url + "/v1", concurrency=6,
                              timeout_s=POLICY.attempt_timeout_s)
    return EndpointConfig(ep.name, f"compat:{url}/v1#fake-model", concurrency=6,
                          timeout_s=POLICY.attempt_timeout_s)


@contextlib.contextmanager
def _servers(responders: list[Responder]) -> Iterator[list[FakeLLMServer]]:
    servers = [FakeLLMServer(r) for r in responders]
    try:
        yield [s.start() for s in servers]
    finally:
        for s in servers:
            s.stop()


def _run(tmp: Path, tag: str, keyset: KeySet, faults: bool, sequential: bool
         ) -> tuple[list[Finished], EvidenceStore, list[FaultInjector]]:
    eps = _endpoints()
    responders: list[Responder] = [_responder(ep.behaviour, keyset) for ep in eps]
    injectors = [FaultInjector(r, rate=0.3, seed=i) for i, r in enumerate(responders)]
    store = EvidenceStore(tmp / f"{tag}.sqlite")
    with _servers(list(injectors) if faults else responders) as servers:
        plans: list[tuple[Plan, KeySet]] = []
        for ep, srv in zip(eps, servers, strict=True):
            plan = build_plan(f"{tag}-{ep.name}", _config(ep, srv.url), keyset, "keys/c.json",
                              CampaignSettings(sequential=sequential), seed=ep.seed)
            store.create_audit(plan.audit_id, ep.name, plan.to_dict())
            plans.append((plan, keyset))
        done = asyncio.run(asyncio.wait_for(run_plans(plans, store, policy=POLICY), 240))
    return done, store, injectors


def _user_text(plan: Plan, prompt_id: str) -> str:
    return next(m["content"] for m in plan.prompts[prompt_id] if m["role"] == "user")


def _wall(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def _check_endpoint(item: Finished, store: EvidenceStore, inj: FaultInjector) -> None:
    plan, aid = item.plan, item.plan.audit_id
    recs = store.records(aid)
    by_query: dict[str, list[dict[str, Any]]] = {}
    for r in recs:
        by_query.setdefault(r["query_id"], []).append(r)
    # every query sent: exactly one final record, the last of its attempts, a success
    planned = {q.query_id for q in plan.queries}
    if plan.settings.sequential:  # an early stop leaves the rest unsent
        assert set(by_query) <= planned and (item.result.stopped_early or
                                             set(by_query) == planned)
    else:
        assert set(by_query) == planned
    arrivals = inj.by_prompt()
    for q in (q for q in plan.queries if q.query_id in by_query):
        attempts = by_query[q.query_id]
        finals = [r for r in attempts if r["final"]]
        assert len(finals) == 1 and finals[0] is attempts[-1], q.query_id
        assert finals[0]["outcome"] == "ok", (q.query_id, finals[0]["error_type"])
        assert [r["attempt"] for r in attempts] == list(range(1, len(attempts) + 1))
        sent = arrivals[_user_text(plan, q.prompt_id)]
        # one request per recorded attempt, none after the success was committed
        # never more requests than recorded attempts (an attempt that timed out may not
        # have reached the server), none after the success was committed
        assert 1 <= len(sent) <= len(attempts), q.query_id
        assert sent[-1].fault in (None, *SUCCESS_FAULTS), q.query_id
        assert max(a.t_wall for a in sent) <= _wall(finals[0]["ts"])
        for earlier, later in itertools.pairwise(sent):
            if earlier.earliest_retry is not None:  # Retry-After honoured
                assert later.t_wall >= earlier.earliest_retry - 0.005, q.query_id
    check = store.verify(aid)
    assert check.ok, check.reason
    assert check.count == len(recs) >= len(inj.log)


@pytest.mark.parametrize("sequential", [False, True], ids=["fixed", "sequential"])
def test_faulty_campaign_loses_nothing_and_keeps_verdicts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sequential: bool) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-campaign-not-real")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-campaign-not-real")
    keyset = KeySet.generate("campaign", KEYS, seed=11)
    clean, clean_store, _ = _run(tmp_path, "clean", keyset, False, sequential)
    faulty, store, injectors = _run(tmp_path, "faulty", keyset, True, sequential)
    total = sum(len(item.plan.queries) for item in faulty)
    assert total >= 1000 and len(faulty) >= 10
    counts: Counter[str] = Counter()
    for inj in injectors:
        counts.update(inj.counts())
    requests = sum(counts.values())
    failing = sum(n for kind, n in counts.items() if kind not in {"ok", *SUCCESS_FAULTS})
    assert 0.2 <= (failing + counts["drip"]) / requests <= 0.4, counts
    assert set(FAULTS) <= set(counts), f"fault kinds never injected: {set(FAULTS) - set(counts)}"
    for item, inj in zip(faulty, injectors, strict=True):
        _check_endpoint(item, store, inj)
    verdicts = {c.plan.endpoint.name: c.result.verdict for c in clean}
    assert {f.plan.endpoint.name: f.result.verdict for f in faulty} == verdicts
    assert set(verdicts.values()) >= {"OWNED", "NOT DETECTED", "SUSPECTED FILTERING"}
    for c, f in zip(clean, faulty, strict=True):
        assert c.result.analysis is not None and f.result.analysis is not None
        assert f.result.status == c.result.status == "completed"
        if not sequential:  # the same queries were answered: the same statistics
            assert f.result.analysis.counts == c.result.analysis.counts
            assert f.result.analysis.p_value == c.result.analysis.p_value
        assert clean_store.verify(c.plan.audit_id).ok
    store.close()
    clean_store.close()
