"""After the queries: audit results → reports (batch-corrected) → one bundle per endpoint."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from auditor.audit import AuditResult, analysis_settings
from auditor.costs import cost_usd
from auditor.evidence import EvidenceStore

if TYPE_CHECKING:
    from auditor.keys import KeySet
    from auditor.plan import Plan
    from auditor.report import Report


@dataclass
class Finished:
    """One endpoint at the end: its plan, result, final report and bundle path."""

    plan: Plan
    keyset: KeySet
    result: AuditResult
    report: Report | None = None
    bundle: Path | None = None


def report_params(plan: Plan) -> dict[str, Any]:
    """Settings and the (now revealed) CSPRNG seed; never prompt text."""
    ep = plan.endpoint
    return {
        "settings": plan.settings.to_dict(), "schedule_seed": plan.seed,
        "control_seed": plan.control_seed, "planned": plan.counts(),
        "endpoint": {"name": ep.name, "concurrency": ep.concurrency, "rpm": ep.rpm,
                     "base_url": ep.base_url, "credential_env": ep.credential_env},
    }


def build_report(item: Finished, store: EvidenceStore) -> Report:
    from auditor.report import Report
    from auditor.scoring import analyze

    plan, res = item.plan, item.result
    analysis = res.analysis or analyze(store.records(plan.audit_id, final_only=True),
                                       analysis_settings(plan, item.keyset))
    chain = store.verify(plan.audit_id)
    tokens = {"prompt": res.tokens.get("prompt", 0), "completion": res.tokens.get("completion", 0)}
    report = Report(
        audit_id=plan.audit_id, endpoint_id=plan.endpoint.name, endpoint_spec=plan.endpoint.spec,
        resolved_models=res.resolved_models, params=report_params(plan), started=res.started,
        finished=res.finished, queries=res.queries, tokens=tokens,
        cost_usd=cost_usd(plan.endpoint.spec, tokens["prompt"], tokens["completion"]),
        commitment=item.keyset.commitment(),
        commitment_ok=str(item.keyset.commitment()["digest"]) == plan.commitment_digest,
        chain_head=chain.head, chain_count=chain.count, analysis=analysis)
    return _mark_error(report, res)


def _mark_error(report: Report, res: AuditResult) -> Report:
    """A failed endpoint is ERROR unless its evidence already proved the claim."""
    if res.status == "error" and report.verdict != "OWNED":
        return replace(report, verdict="ERROR")
    return report


def finalize(items: list[Finished], store: EvidenceStore, alpha: float,
             method: str = "holm") -> list[Finished]:
    """Reports for every endpoint, corrected together when there are several."""
    from auditor.report import finalize_batch

    reports = [build_report(item, store) for item in items]
    if len(reports) > 1:
        reports = finalize_batch(reports, alpha, method)
        reports = [_mark_error(r, item.result) for r, item in zip(reports, items, strict=True)]
    for item, report in zip(items, reports, strict=True):
        item.report = report
    return items


def write_bundles(items: list[Finished], store: EvidenceStore, out_dir: Path, *,
                  reveal: bool = False, signing_key: Path | None = None) -> None:
    from auditor.bundle import write_bundle

    for item in items:
        assert item.report is not None
        records = store.records(item.plan.audit_id)
        if not reveal:
            records = [{k: v for k, v in r.items() if k not in ("request", "response")}
                       for r in records]
        item.bundle = write_bundle(_free_dir(out_dir / item.plan.audit_id), item.report, records,
                                   item.keyset.commitment(),
                                   keyset=item.keyset if reveal else None, reveal=reveal,
                                   signing_key=signing_key)


def _free_dir(path: Path) -> Path:
    """``path``, or ``path.2``, ``path.3``... when an earlier run already wrote a bundle."""
    candidate, n = path, 1
    while candidate.exists() and any(candidate.iterdir()):
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate
