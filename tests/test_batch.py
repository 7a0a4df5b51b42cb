"""Batch audits: endpoints file validation, isolation of failing endpoints, Holm report."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path

import pytest

from auditor.batch import BatchEntry, load_batch, prepare, run_plans
from auditor.errors import UserError
from auditor.evidence import EvidenceStore
from auditor.finish import Finished, finalize
from auditor.keys import KeySet
from auditor.plan import CampaignSettings, EndpointConfig
from auditor.retry import RetryPolicy
from tests import fakes_behaviour as fb
from tests.fakeserver import FakeLLMServer, FakeReply, FakeRequest, Responder, openai_error

FAST = RetryPolicy(max_attempts=3, base_delay_s=0.02, max_delay_s=0.1, attempt_timeout_s=10.0,
                   deadline_s=30.0)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "endpoints.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_load_batch_defaults_and_overrides(tmp_path: Path) -> None:
    path = _write(tmp_path, """
[defaults]
keys = "keys/a.json"
concurrency = 4
rpm = 120
temperature = 0.5

[[endpoint]]
name = "acme"
provider = "openai"
model = "gpt-4o-mini"
credential_env = "ACME_KEY"
max_queries = 50

[[endpoint]]
name = "local"
spec = "compat:http://127.0.0.1:8000/v1#m"
concurrency = 16
system_prompt = "Be brief."
""")
    a, b = load_batch(path)
    assert a.endpoint == EndpointConfig("acme", "openai:gpt-4o-mini", None, "ACME_KEY", 4, 120.0)
    assert a.key_file == "keys/a.json" and a.max_queries == 50 and a.temperature == 0.5
    assert b.endpoint.spec == "compat:http://127.0.0.1:8000/v1#m"
    assert b.endpoint.concurrency == 16 and b.endpoint.rpm == 120.0
    s = b.settings(CampaignSettings())
    assert s.system_prompt == "Be brief." and s.temperatures == (0.5,)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[[endpoint]]\nname='x'\nprovider='openai'\nmodel='m'\nconcurency=3\n",
         "endpoint #1 (x): unknown field 'concurency'"),
        ("[[endpoint]]\nname='x'\nprovider='openai'\n", "endpoint #1 (x): give `spec`"),
        ("[[endpoint]]\nspec='compat:m'\nconcurrency='8'\n", "field 'concurrency' must be int"),
        ("[[endpoint]]\nspec='compat:m'\nconcurrency=0\n", "concurrency must be at least 1"),
        ("[[endpoint]]\nname='a'\nspec='compat:m'\n[[endpoint]]\nname='a'\nspec='compat:n'\n",
         "names must be unique (repeated: a)"),
        ("[defaults]\nkeys='k.json'\n", "needs at least one [[endpoint]]"),
        ("[endpoints]\nx=1\n", "unknown table(s) endpoints"),
        ("[[endpoint]]\nspec='compat:m'\ntemperature=5\n", "temperature must be between"),
        ("[[endpoint\n", "not a readable TOML file"),
    ],
)
def test_load_batch_rejects_bad_files(tmp_path: Path, body: str, message: str) -> None:
    path = _write(tmp_path, body)
    with pytest.raises(UserError) as info:
        load_batch(path, default_keys="k.json")
    assert str(path) in str(info.value) and message in str(info.value)


def test_load_batch_needs_keys_and_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no key file"):
        load_batch(_write(tmp_path, "[[endpoint]]\nspec='compat:m'\n"))
    with pytest.raises(UserError, match="no such file"):
        load_batch(tmp_path / "missing.toml")


@contextlib.contextmanager
def _servers(responders: list[Responder]) -> Iterator[list[FakeLLMServer]]:
    servers = [FakeLLMServer(r).start() for r in responders]
    try:
        yield servers
    finally:
        for srv in servers:
            srv.stop()


def _run_batch(tmp_path: Path, keyset: KeySet, servers: Sequence[FakeLLMServer | str],
               settings: CampaignSettings, concurrency: int = 4,
               store_name: str = "ev.sqlite") -> list[Finished]:
    """Audit every server (or server URL) in one batch; the chains are verified."""
    urls = [s if isinstance(s, str) else s.url for s in servers]
    entries = [BatchEntry(EndpointConfig(f"ep{i:02d}", "compat:fake-model",
                                         base_url=url + "/v1", concurrency=concurrency),
                          "k.json") for i, url in enumerate(urls)]
    with EvidenceStore(tmp_path / store_name) as store:
        plans = prepare(entries, {"k.json": keyset}, settings, store)
        done = asyncio.run(run_plans(plans, store, policy=FAST))
        finalize(done, store, alpha=0.01, method="holm")
        for d in done:
            assert store.verify(d.plan.audit_id).ok
    return done


def test_batch_isolates_a_failing_endpoint_and_corrects(tmp_path: Path) -> None:
    ks = KeySet.generate("b", 10, seed=4)
    responders = [fb.fingerprinted(ks), fb.vanilla(), lambda req: openai_error(401, "no")]
    with _servers(responders) as servers:
        done = _run_batch(tmp_path, ks, servers, CampaignSettings(sequential=False))
    verdicts = [d.report.verdict if d.report else None for d in done]
    assert verdicts == ["OWNED", "NOT DETECTED", "ERROR"]
    assert [d.result.status for d in done] == ["completed", "completed", "error"]
    owned = done[0].report
    assert owned is not None and owned.correction == "holm" and owned.batch_size == 3
    assert owned.p_corrected is not None and owned.p_corrected >= owned.analysis.p_value
    assert all(len(s.requests) > 0 for s in servers)


def _durations(done: list[Finished]) -> dict[str, float]:
    def secs(d: Finished) -> float:
        t0 = datetime.fromisoformat(d.result.started.replace("Z", "+00:00"))
        t1 = datetime.fromisoformat(d.result.finished.replace("Z", "+00:00"))
        return (t1 - t0).total_seconds()

    return {d.plan.endpoint.name: secs(d) for d in done}


@pytest.mark.slow
def test_fifty_endpoints_one_rate_limited_others_unaffected(tmp_path: Path) -> None:
    """49 latency-bound endpoints finish as fast beside a 429-only endpoint as without it.

    The baseline is the same 49 endpoints run without the bad one (on this 2-core machine
    49 clients and 49 in-process fake servers share the CPU, so one endpoint alone is
    faster still; bench/batch_scale.py prints that ratio too).
    """
    ks = KeySet.generate("scale", 4, seed=9)
    settings = CampaignSettings(sequential=False, controls_per_key=0.5, decoys_per_key=0.5)
    inner = fb.fingerprinted(ks)

    async def slow(req: FakeRequest) -> FakeReply:  # latency-bound: 1 s per answer
        reply = inner(req)
        assert isinstance(reply, FakeReply)
        reply.delay_s = 1.0
        return reply

    responders: list[Responder] = [slow] * 49 + [lambda req: openai_error(429, "slow down")]
    worst_alone, worst, done, limited_requests = 1e9, 1e9, [], 0
    for rep in range(2):  # interleaved, best of two: the CPU is shared with other work
        with _servers([slow] * 49) as servers:
            alone = _run_batch(tmp_path, ks, servers, settings, store_name=f"b{rep}.sqlite")
        worst_alone = min(worst_alone, max(_durations(alone).values()))
        with _servers(responders) as servers:
            done = _run_batch(tmp_path, ks, servers, settings, store_name=f"c{rep}.sqlite")
            limited_requests = len(servers[-1].requests)
        beside = _durations(done)
        worst = min(worst, max(v for k, v in beside.items() if k != "ep49"))
    healthy = [d for d in done if d.plan.endpoint.name != "ep49"]
    assert all(d.result.status == "completed" and d.result.queries == 8 for d in healthy)
    assert done[-1].result.status == "error" and done[-1].report is not None
    assert done[-1].report.verdict == "ERROR" and limited_requests >= 3
    print(f"49 alone: worst {worst_alone:.2f}s; beside a 429-only endpoint: worst {worst:.2f}s")
    assert worst <= 1.2 * worst_alone
