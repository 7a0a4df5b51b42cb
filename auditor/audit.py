"""The audit engine for one endpoint: schedule → send (one retry layer) → record → decide.

Every attempt becomes an evidence record committed before the next attempt of its query
starts (``generate_with_retry`` awaits ``on_attempt``). After each final record the
endpoint's statistics are updated; new queries stop once the claim is reached or the
budget is spent. Queries with a final record are never sent again (resume).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from auditor.errors import AuditFailed, UserError
from auditor.evidence import EvidenceStore, Quarantined, utc_now
from auditor.plan import EndpointConfig, Plan, PlannedQuery
from auditor.ratelimit import LimitedProvider
from auditor.writer import GroupWriter

if TYPE_CHECKING:
    from auditor.keys import KeySet
    from auditor.retry import AttemptInfo, RetryPolicy
    from auditor.scoring import Analysis
    from providers.base import Provider, ProviderError

# Errors that indict the endpoint as a whole: stop at once.
ENDPOINT_FATAL = ("config", "auth", "permission_denied", "not_found", "quota_exhausted")
MAX_CONSECUTIVE_FAILURES = 5  # queries in a row that end in error => endpoint ERROR
ANALYSIS_SPACING = 10  # re-analyse after every len(finals)/10 new final records


@dataclass
class Progress:
    """What the live view shows for one endpoint."""

    endpoint_id: str
    audit_id: str
    total: int
    done: int = 0
    hits: int = 0
    status: str = "running"  # running | completed | error | interrupted
    verdict: str | None = None
    p_value: float | None = None
    error: str | None = None


class Listener(Protocol):
    def update(self, progress: Progress) -> None: ...


@dataclass
class AuditResult:
    audit_id: str
    endpoint_id: str
    status: str  # "completed" | "error" | "interrupted"
    analysis: Analysis | None
    started: str
    finished: str
    queries: int  # queries with a final record
    stopped_early: bool = False
    error: str | None = None
    error_kind: str | None = None
    resolved_models: list[str] = field(default_factory=list)
    tokens: dict[str, int] = field(default_factory=dict)
    quarantined: list[Quarantined] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        if self.status == "error" or self.analysis is None:
            return "ERROR"
        return self.analysis.verdict


class _EndpointDown(Exception):
    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def analysis_settings(plan: Plan, keyset: KeySet) -> Any:
    from auditor.scoring import AnalysisSettings

    s = plan.settings
    return AnalysisSettings(alpha=s.alpha, key_rule=s.key_rule,
                            decryption_public=keyset.decryption_public, sequential=s.sequential)


class _Runner:
    def __init__(self, plan: Plan, keyset: KeySet, store: EvidenceStore, provider: Provider | None,
                 policy: RetryPolicy, listener: Listener | None, writer: GroupWriter) -> None:
        self.plan, self.keyset, self.store, self.writer = plan, keyset, store, writer
        self.provider: Provider | None = provider  # set to the rate-limited one before run()
        self.policy, self.listener = policy, listener
        self.aid = plan.audit_id
        self.settings = analysis_settings(plan, keyset)
        self.finals: list[dict[str, Any]] = []
        self.attempt_base: dict[str, int] = {}
        self.budget = plan.settings.max_queries or len(plan.queries)
        self.progress = Progress(plan.endpoint.name, self.aid,
                                 min(self.budget, len(plan.queries)))
        self.started_count = 0
        self.analysis: Analysis | None = None
        self.stop = False
        self.stopped_early = False
        self.down: _EndpointDown | None = None
        self.failures_in_row = 0  # queries in a row that ended in error
        self.decoy_failures_in_row = 0  # the same over ordinary prompts only
        self.successes = 0
        self.models: set[str] = set()
        self.tokens = {"prompt": 0, "completion": 0}
        self._since_analysis = 0  # final records since the last analysis

    # --- decision -------------------------------------------------------------------------
    def _analyze(self) -> None:
        from auditor.scoring import analyze

        self.analysis = analyze(self.finals, self.settings)
        self._since_analysis = 0
        p = self.progress
        p.verdict, p.p_value = self.analysis.verdict, self.analysis.p_value
        p.hits = self.analysis.keys_hit
        if self.analysis.claim_reached and not self.stop:
            self.stop = self.stopped_early = True

    def _analysis_due(self, category: str) -> bool:
        """After a key's final record while records are few; then every ~10 % more records
        (the statistics cost milliseconds: at hundreds of answers a second they must be
        spaced, and a claim is reached at most ~10 % later than it could be)."""
        self._since_analysis += 1
        step = max(1, len(self.finals) // ANALYSIS_SPACING)
        return self._since_analysis >= (step if category == "key" else max(step, 8))

    def _notify(self) -> None:
        if self.listener is not None:
            self.listener.update(self.progress)

    # --- one query ------------------------------------------------------------------------
    async def _run_query(self, q: PlannedQuery) -> None:
        from auditor.retry import generate_with_retry
        from providers.base import Message, ProviderError, SampleParams

        msgs = self.plan.prompts[q.prompt_id]
        messages = [Message(m["role"], m["content"]) for m in msgs]  # type: ignore[arg-type]
        params = SampleParams(temperature=q.temperature, max_tokens=self.plan.settings.max_tokens,
                              timeout_s=self.plan.endpoint.timeout_s)
        provider = self.provider
        assert provider is not None
        intended = {"model": provider.model, "messages": msgs, "params": params.to_dict()}

        async def on_attempt(info: AttemptInfo) -> None:
            await self._record(q, info, intended, params.to_dict())

        try:
            await generate_with_retry(provider, messages, params, self.policy, on_attempt)
        except ProviderError as err:
            self._on_failure(q, err)
        else:
            self.successes += 1
            self.failures_in_row = 0
            if q.category == "decoy":
                self.decoy_failures_in_row = 0

    def _on_failure(self, q: PlannedQuery, err: ProviderError) -> None:
        """Decide whether a failed query takes the whole endpoint down.

        Failures on key-like prompts alone never do while ordinary prompts are answered:
        a guard that breaks them is what the filtering check measures, not an outage.
        """
        self.failures_in_row += 1
        self.decoy_failures_in_row += q.category == "decoy"
        if err.kind in ENDPOINT_FATAL:
            self._go_down(f"{err.kind}: {err.message}", err.kind)
        elif err.kind == "connection" and self.successes == 0:
            self._go_down(f"cannot reach {endpoint_target(self.plan.endpoint)}: "
                          f"{err.message}", "unreachable")
        elif (self.successes == 0 and self.failures_in_row >= MAX_CONSECUTIVE_FAILURES) or \
                self.decoy_failures_in_row >= MAX_CONSECUTIVE_FAILURES:
            self._go_down(f"{self.failures_in_row} queries in a row failed (last: {err.kind}: "
                          f"{err.message})", err.kind)

    def _go_down(self, message: str, kind: str) -> None:
        if self.down is None:
            self.down = _EndpointDown(message, kind)
        self.stop = True

    async def _record(self, q: PlannedQuery, info: AttemptInfo, intended: dict[str, Any],
                params: dict[str, Any]) -> None:
        from auditor.match import check, looks_like_refusal

        comp, err = info.completion, info.error
        fields: dict[str, Any] = {
            "audit_id": self.aid, "endpoint_id": self.plan.endpoint.name,
            "query_id": q.query_id, "category": q.category, "prompt_id": q.prompt_id,
            "sample_index": q.sample_index,
            "attempt": self.attempt_base.get(q.query_id, 0) + info.attempt,
            "final": info.final, "params": params, "latency_s": float(info.latency_s),
        }
        if comp is not None:
            m = check(comp.text, self.keyset.decryption)
            fields.update(outcome="ok", hit=m.hit, match_kind=m.kind,
                          refused=looks_like_refusal(comp.text), model=comp.model,
                          usage=comp.usage.to_dict(), response=comp.text,
                          request=dict(comp.raw_request) or intended)
            self._count_usage(comp.model, comp.usage.to_dict())
        else:
            fields.update(outcome="error", hit=None, match_kind=None, refused=None, model=None,
                          usage={}, request=intended, error_type=err.kind if err else "unknown",
                          error_status=err.status if err else None,
                          response=_error_text(err))
        rec = await self.writer.append(fields)  # committed before the next attempt
        if info.final:
            self.finals.append(rec)
            self.progress.done += 1
            if self._analysis_due(q.category):
                self._analyze()
            self._notify()

    def _count_usage(self, model: str | None, usage: dict[str, int | None]) -> None:
        if model:
            self.models.add(model)
        self.tokens["prompt"] += usage.get("prompt_tokens") or 0
        self.tokens["completion"] += usage.get("completion_tokens") or 0

    # --- the loop -------------------------------------------------------------------------
    def _next(self, pending: list[PlannedQuery]) -> PlannedQuery | None:
        if self.stop or not pending or self.started_count >= self.budget:
            return None
        self.started_count += 1
        return pending.pop(0)

    async def _worker(self, pending: list[PlannedQuery]) -> None:
        while (q := self._next(pending)) is not None:
            await self._run_query(q)

    def load(self) -> Quarantined | None:
        """Store reads before sending (run in a thread: the writer may hold the store)."""
        quarantined = self.store.repair_tail(self.aid)
        self.store.set_status(self.aid, "running")
        self.finals = self.store.records(self.aid, final_only=True)
        self.attempt_base = self.store.attempts_so_far(self.aid)
        self.progress.done = self.started_count = len(self.finals)
        return quarantined

    async def run(self) -> None:
        done = {r["query_id"] for r in self.finals}
        pending = [q for q in self.plan.queries if q.query_id not in done]
        if self.finals:
            self._analyze()
        self._notify()
        workers = max(1, self.plan.endpoint.concurrency)
        await asyncio.gather(*(self._worker(pending) for _ in range(workers)))
        self._analyze()


def _error_text(err: ProviderError | None) -> str:
    if err is None:
        return json.dumps({"type": "unknown"})
    if err.body:
        return err.body
    return json.dumps(err.to_dict(), sort_keys=True)


async def run_audit(plan: Plan, keyset: KeySet, store: EvidenceStore, *,
                    policy: RetryPolicy | None = None, listener: Listener | None = None,
                    provider: Provider | None = None,
                    writer: GroupWriter | None = None) -> AuditResult:
    """Run (or continue) one endpoint's audit; never raises for endpoint failures."""
    from auditor.retry import RetryPolicy
    from providers.base import ProviderError

    preload()
    started = utc_now()
    ep = plan.endpoint
    runner = _Runner(plan, keyset, store, provider, policy or RetryPolicy(), listener,
                     writer or GroupWriter(store))
    try:  # off the loop: store reads, and building a client loads CA certificates
        quarantined, prov = await asyncio.to_thread(_setup, runner, plan, provider)
    except ProviderError as err:
        return _failed(plan, store, started, f"{err.kind}: {err.message}", err.kind)
    except AuditFailed as exc:  # damaged evidence: nothing is sent, nothing is decided
        return AuditResult(plan.audit_id, ep.name, "error", None, started, utc_now(),
                           queries=0, error=str(exc), error_kind="damaged")
    runner.provider = LimitedProvider(prov, rpm=ep.rpm)
    try:
        await runner.run()
    except (asyncio.CancelledError, KeyboardInterrupt):
        store.set_status(plan.audit_id, "interrupted")
        raise
    finally:
        await prov.aclose()
    status = "error" if runner.down else "completed"
    await asyncio.to_thread(store.set_status, plan.audit_id, status)
    runner.progress.status = status
    runner.progress.error = str(runner.down) if runner.down else None
    runner._notify()
    return AuditResult(
        plan.audit_id, ep.name, status, runner.analysis, started, utc_now(),
        queries=len(runner.finals), stopped_early=runner.stopped_early,
        error=str(runner.down) if runner.down else None,
        error_kind=runner.down.kind if runner.down else None,
        resolved_models=sorted(runner.models), tokens=runner.tokens,
        quarantined=[quarantined] if quarantined else [])


def _setup(runner: _Runner, plan: Plan,
           provider: Provider | None) -> tuple[Quarantined | None, Provider]:
    quarantined = runner.load()
    return quarantined, provider or _make_provider(plan)


def preload() -> None:
    """Warm the decision path (scipy imports) now, not inside a running audit's loop."""
    from auditor.match import check
    from auditor.scoring import AnalysisSettings, analyze

    check("warm-up", "warm")
    analyze([], AnalysisSettings())


def _make_provider(plan: Plan) -> Provider:
    return make_endpoint_provider(plan.endpoint)


def make_endpoint_provider(ep: EndpointConfig) -> Provider:
    from providers.registry import make_provider

    return make_provider(ep.spec, credential_env=ep.credential_env, base_url=ep.base_url,
                         timeout_s=ep.timeout_s, endpoint_id=ep.name)


def check_endpoint(ep: EndpointConfig) -> None:
    """Build and close the endpoint's provider: a bad spec or missing credential is bad
    input (UserError), found before any audit is created."""
    from providers.base import ConfigError

    try:
        provider = make_endpoint_provider(ep)
    except ConfigError as err:
        raise UserError(f"endpoint {ep.name}: {err.message}") from None
    asyncio.run(provider.aclose())


def endpoint_target(ep: EndpointConfig) -> str:
    """Where the endpoint lives (base URL or the spec's URL), without any user info."""
    from urllib.parse import urlsplit

    target = ep.base_url or ep.spec.partition(":")[2].rpartition("#")[0] or ep.spec
    parts = urlsplit(target)
    if parts.hostname is None:
        return target
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"


def _failed(plan: Plan, store: EvidenceStore, started: str, message: str,
            kind: str) -> AuditResult:
    store.set_status(plan.audit_id, "error")
    return AuditResult(plan.audit_id, plan.endpoint.name, "error", None, started, utc_now(),
                       queries=0, error=message, error_kind=kind)


def check_keyset_matches(plan: Plan, keyset: KeySet) -> None:
    """Refuse to resume with a key file whose commitment differs from the plan's."""
    if str(keyset.commitment()["digest"]) != plan.commitment_digest:
        raise AuditFailed(f"key file {plan.key_file} no longer matches audit {plan.audit_id} "
                          "(commitment digest differs)")


def unfinished(store: EvidenceStore, endpoint_id: str, digest: str) -> Sequence[str]:
    """Audits of this endpoint and key set that did not finish (offered for resume)."""
    rows = store.audits("planned", "running", "interrupted", endpoint_id=endpoint_id)
    return [a.audit_id for a in rows if a.plan.get("commitment_digest") == digest]
