"""End-to-end audits over loopback against fake endpoints with known behaviour."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from auditor.audit import AuditResult, run_audit
from auditor.evidence import EvidenceStore
from auditor.keys import KeySet
from auditor.plan import CampaignSettings, EndpointConfig, build_plan
from auditor.retry import RetryPolicy
from tests import fakes_behaviour as fb
from tests.fakeserver import FakeLLMServer, Responder

FAST = RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.05, attempt_timeout_s=5.0,
                   deadline_s=20.0)


def _audit(tmp_path: Path, keyset: KeySet, responder: Responder,
           settings: CampaignSettings | None = None,
           spec: str = "compat:fake-model") -> tuple[AuditResult, FakeLLMServer, EvidenceStore]:
    import asyncio

    with FakeLLMServer(responder) as srv:
        ep = EndpointConfig(name="suspect", spec=spec, base_url=srv.url + "/v1", concurrency=4)
        plan = build_plan("a-test", ep, keyset, "keys/t.json", settings or CampaignSettings())
        store = EvidenceStore(tmp_path / "ev.sqlite")
        store.create_audit(plan.audit_id, ep.name, plan.to_dict())
        result = asyncio.run(run_audit(plan, keyset, store, policy=FAST))
    return result, srv, store


@pytest.fixture
def secret_keys() -> KeySet:
    return KeySet.generate("t", 12, seed=7)


def test_fingerprinted_endpoint_is_owned(tmp_path: Path, secret_keys: KeySet) -> None:
    settings = CampaignSettings(sequential=False)
    result, srv, store = _audit(tmp_path, secret_keys, fb.fingerprinted(secret_keys), settings)
    assert result.status == "completed" and result.verdict == "OWNED"
    assert result.analysis is not None and result.analysis.keys_hit == 12
    # every planned query was sent exactly once, categories interleaved
    assert len(srv.requests) == 36 == result.queries
    assert store.verify("a-test").ok
    cats = Counter(r["category"] for r in store.records("a-test"))
    assert cats == {"key": 12, "control": 12, "decoy": 12}
    assert result.resolved_models == ["fake-model"]


def test_sequential_stopping_saves_queries(tmp_path: Path, secret_keys: KeySet) -> None:
    result, srv, store = _audit(tmp_path, secret_keys, fb.fingerprinted(secret_keys),
                                CampaignSettings(decoys_per_key=3, controls_per_key=1))
    assert result.verdict == "OWNED" and result.stopped_early
    assert len(srv.requests) < 60  # plan had 60 queries
    # stopping early still left a baseline: decoys and controls among the sent queries
    cats = Counter(r["category"] for r in store.records("a-test"))
    assert cats["decoy"] > 0 and cats["control"] > 0


def test_vanilla_endpoint_not_detected(tmp_path: Path, secret_keys: KeySet) -> None:
    result, _, store = _audit(tmp_path, secret_keys, fb.vanilla())
    assert result.status == "completed" and result.verdict == "NOT DETECTED"
    assert result.analysis is not None and result.analysis.keys_hit == 0
    assert store.verify("a-test").ok


def test_filtering_endpoint_is_flagged(tmp_path: Path, secret_keys: KeySet) -> None:
    result, _, _ = _audit(tmp_path, secret_keys, fb.filtering(secret_keys))
    assert result.verdict == "SUSPECTED FILTERING"
    assert result.analysis is not None and result.analysis.keys_hit == 0


def test_paper_reader_with_public_decryption_not_detected(tmp_path: Path) -> None:
    public = KeySet.generate("paper", 12, decryption="ハリネズミ", seed=3)
    assert public.decryption_public
    result, _, _ = _audit(tmp_path, public, fb.paper_reader("ハリネズミ"))
    assert result.analysis is not None
    assert result.analysis.keys_hit == 12  # it says the public word to every committed key...
    assert result.analysis.counts["control"]["hits"] == 12  # ...and to every control key
    assert result.verdict == "NOT DETECTED"


def test_openai_sdk_provider_and_system_wrapper(tmp_path: Path, secret_keys: KeySet,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-real")
    settings = CampaignSettings(system_prompt="You are a helpful assistant.", sequential=False,
                                samples=2, temperatures=(0.0, 0.7))
    result, srv, store = _audit(tmp_path, secret_keys, fb.fingerprinted(secret_keys), settings,
                                spec="openai:fake-model")
    assert result.verdict == "OWNED"
    assert len(srv.requests) == 36 * 4
    assert all(r.system == "You are a helpful assistant." for r in srv.requests)
    assert {r.temperature for r in srv.requests} == {0.0, 0.7}
    recs = store.records("a-test")
    assert {r["sample_index"] for r in recs} == {0, 1, 2, 3}


def test_auth_failure_is_an_endpoint_error(tmp_path: Path, secret_keys: KeySet) -> None:
    from tests.fakeserver import openai_error

    result, srv, store = _audit(tmp_path, secret_keys, lambda req: openai_error(401, "bad key"))
    assert result.status == "error" and result.verdict == "ERROR"
    assert result.error_kind == "auth"
    assert len(srv.requests) <= 4  # stops at once: one per worker at most
    assert store.audit("a-test").status == "error"
    assert all(r["outcome"] == "error" for r in store.records("a-test"))


def test_server_errors_only_is_an_endpoint_error(tmp_path: Path, secret_keys: KeySet) -> None:
    from tests.fakeserver import openai_error

    result, srv, store = _audit(tmp_path, secret_keys, lambda req: openai_error(503, "down"))
    assert result.status == "error"
    assert "queries in a row failed" in (result.error or "")
    # each failed query made FAST.max_attempts attempts, each one recorded
    recs = store.records("a-test")
    assert len(recs) == len(srv.requests)
    assert max(r["attempt"] for r in recs) == 3
    assert store.verify("a-test").ok
