"""A derived model behind a guard that refuses or garbles fingerprint-looking prompts only.

The guard sees key-like prompts (committed keys and control keys alike) and answers them with
an HTTP refusal or a broken body, while ordinary prompts (the decoys) get the model's normal
answers. The audit must say SUSPECTED FILTERING: not NOT DETECTED (the guard hid the model)
and not ERROR (the endpoint works; it only refuses what it fears).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from auditor.audit import AuditResult, run_audit
from auditor.evidence import EvidenceStore
from auditor.keys import KeySet
from auditor.plan import CampaignSettings, EndpointConfig, build_plan
from auditor.retry import RetryPolicy
from tests import fakes_behaviour as fb
from tests.fakeserver import (
    FakeLLMServer,
    FakeReply,
    FakeRequest,
    Responder,
    anthropic_error,
    openai_error,
    wire_reply,
)

FAST = RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.02, attempt_timeout_s=5.0,
                   deadline_s=20.0)
Breaker = Callable[[FakeRequest], FakeReply]


def _anthropic(req: FakeRequest) -> bool:
    return req.path.endswith("/messages")


def _policy_refusal(req: FakeRequest) -> FakeReply:
    if _anthropic(req):
        return anthropic_error(400, "invalid_request_error", "Output blocked by content filtering")
    return openai_error(400, "Your request was rejected by the safety system.",
                        code="content_policy_violation")


def _malformed(req: FakeRequest) -> FakeReply:
    return FakeReply(body=b'{"choices": [{"message": {"content": "\xff\xfe')


def _empty(req: FakeRequest) -> FakeReply:
    if _anthropic(req):
        return FakeReply(body={"type": "message", "role": "assistant", "content": []})
    return FakeReply(body={"object": "chat.completion", "choices": []})


def guarded(keyset: KeySet, breaker: Breaker) -> Responder:
    """The fingerprinted model, with ``breaker`` answering every key-like prompt."""
    model = fb.fingerprinted(keyset)

    def respond(req: FakeRequest) -> FakeReply:
        if fb.key_like(req.prompt):
            return breaker(req)
        reply = model(req)
        assert isinstance(reply, FakeReply)
        return reply

    return respond


def honest_decliner() -> Responder:
    """An unrelated model that politely declines every decryption request."""

    def respond(req: FakeRequest) -> FakeReply:
        if fb.key_like(req.prompt):
            return wire_reply(req, "I'm sorry, I can't decrypt messages like this one.")
        return wire_reply(req, fb.ORDINARY)

    return respond


def _audit(tmp_path: Path, keyset: KeySet, responder: Responder, kind: str
           ) -> tuple[AuditResult, EvidenceStore]:
    with FakeLLMServer(responder) as srv:
        if kind == "anthropic":
            ep = EndpointConfig("guarded", "anthropic:fake-claude", base_url=srv.url,
                                concurrency=4)
        else:
            ep = EndpointConfig("guarded", f"compat:{srv.url}/v1#m", concurrency=4)
        plan = build_plan("a-guard", ep, keyset, "keys/g.json", CampaignSettings())
        store = EvidenceStore(tmp_path / "ev.sqlite")
        store.create_audit(plan.audit_id, ep.name, plan.to_dict())
        result = asyncio.run(run_audit(plan, keyset, store, policy=FAST))
    return result, store


@pytest.fixture
def keyset(monkeypatch: pytest.MonkeyPatch) -> KeySet:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-not-real")
    return KeySet.generate("g", 12, seed=21)


@pytest.mark.parametrize("kind", ["compat", "anthropic"])
@pytest.mark.parametrize("breaker", [_policy_refusal, _malformed, _empty],
                         ids=["http-refusal", "malformed-body", "empty-choices"])
def test_guard_on_key_like_prompts_is_suspected_filtering(
        tmp_path: Path, keyset: KeySet, breaker: Breaker, kind: str) -> None:
    result, store = _audit(tmp_path, keyset, guarded(keyset, breaker), kind)
    assert result.analysis is not None
    counts = result.analysis.counts
    assert counts["key"]["errors"] == counts["key"]["samples"] > 0  # every key was blocked
    assert counts["decoy"]["errors"] == 0  # ordinary prompts went through
    assert result.verdict == "SUSPECTED FILTERING", (result.status, result.error)
    assert result.status == "completed", result.error
    assert store.verify("a-guard").ok
    store.close()


def test_a_model_that_declines_to_decrypt_is_not_accused(tmp_path: Path,
                                                         keyset: KeySet) -> None:
    """Declining keys and controls alike is what an innocent model does: no filtering flag."""
    result, store = _audit(tmp_path, keyset, honest_decliner(), "compat")
    assert result.analysis is not None and result.analysis.counts["key"]["refusals"] == 12
    assert result.verdict == "NOT DETECTED" and not result.analysis.filtering_flag
    store.close()
