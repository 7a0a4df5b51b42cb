"""The report of one audited endpoint: data model, batch correction, JSON and Markdown.

Renderings: ``render_console`` / ``render_batch_console`` (rich, in report_console.py),
``to_html`` (self-contained, in report_html.py), ``to_json`` and ``to_markdown`` here.
A report holds key ids and counts, never key text or the decryption.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from auditor import stats
from auditor.errors import UserError
from auditor.scoring import CATEGORIES, Analysis

if TYPE_CHECKING:
    from rich.console import Console

SCHEMA = 1


@dataclass
class Report:
    audit_id: str
    endpoint_id: str
    endpoint_spec: str
    resolved_models: list[str]
    params: dict[str, Any]
    started: str
    finished: str
    queries: int
    tokens: dict[str, int]  # prompt / completion totals
    cost_usd: float | None
    commitment: dict[str, Any]  # the public commitment of the key set
    commitment_ok: bool | None  # None: not checked (key set not at hand)
    chain_head: str
    chain_count: int
    analysis: Analysis
    p_corrected: float | None = None
    correction: str = "none"  # "holm" | "bh" | "none"
    batch_size: int = 1
    verdict: str = ""  # final, after correction
    alpha: float = -1.0  # level of the final verdict; -1: the analysis' alpha
    batch_p_values: list[float] = field(default_factory=list)  # raw p of every batch member
    batch_index: int = 0

    def __post_init__(self) -> None:
        if not self.verdict:
            self.verdict = self.analysis.verdict
        if self.p_corrected is None:
            self.p_corrected = self.analysis.p_value
            self.batch_p_values = [self.analysis.p_value]
        if self.alpha < 0:
            self.alpha = float(self.analysis.settings["alpha"])

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "analysis"}
        data = json.loads(json.dumps(data))  # deep copy, tuples to lists
        data["analysis"] = self.analysis.to_dict()
        return {"schema": SCHEMA, **data}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Report:
        if not isinstance(data, Mapping) or data.get("schema") != SCHEMA:
            raise UserError(f"not a report of schema {SCHEMA}")
        d = {k: v for k, v in data.items() if k != "schema"}
        known = {f.name for f in fields(cls)}
        if set(d) - known or "analysis" not in d:
            raise UserError("report has unknown or missing fields")
        d["analysis"] = Analysis.from_dict(d["analysis"])
        try:
            return cls(**d)
        except TypeError as exc:
            raise UserError(f"malformed report ({exc})") from None


def final_verdict(analysis: Analysis, p_corrected: float, alpha: float) -> str:
    """The verdict after batch correction."""
    if p_corrected <= alpha:
        return "OWNED"
    if analysis.verdict == "OWNED":
        return "SUSPECTED FILTERING" if analysis.filtering_flag else "NOT DETECTED"
    return analysis.verdict


def finalize_batch(reports: list[Report], alpha: float, method: str = "holm") -> list[Report]:
    """Correct the p-values of a batch of endpoints together; returns new reports."""
    raw = [r.analysis.p_value for r in reports]
    adjusted = stats.adjust(raw, method)
    return [
        replace(r, p_corrected=p, correction=method, batch_size=len(reports), alpha=alpha,
                verdict=final_verdict(r.analysis, p, alpha), batch_p_values=list(raw),
                batch_index=i)
        for i, (r, p) in enumerate(zip(reports, adjusted, strict=True))
    ]


def to_json(report: Report) -> str:
    """Versioned JSON (schema 1), sorted keys, stable across runs."""
    return json.dumps(report.to_dict(), indent=1, sort_keys=True, ensure_ascii=False,
                      allow_nan=False) + "\n"


def render_console(report: Report, console: Console) -> None:
    from auditor.report_console import render_report

    render_report(report, console)


def render_batch_console(reports: list[Report], console: Console) -> None:
    from auditor.report_console import render_batch

    render_batch(reports, console)


def to_html(report: Report) -> str:
    from auditor.report_html import render_html

    return render_html(report)


# -- Markdown ---------------------------------------------------------------------------


def fmt_p(p: float | None) -> str:
    if p is None:
        return "-"
    return f"{p:.3g}" if p >= 1e-4 else f"{p:.2e}"


def fmt_rate(rate: float | None, ci: tuple[float, float]) -> str:
    if rate is None:
        return "-"
    return f"{rate:.1%} [{ci[0]:.1%}, {ci[1]:.1%}]"


def summary_rows(r: Report) -> list[tuple[str, str]]:
    """The headline figures shared by every rendering."""
    a = r.analysis
    return [
        ("verdict", r.verdict),
        ("endpoint", f"{r.endpoint_id} ({r.endpoint_spec})"),
        ("resolved model(s)", ", ".join(r.resolved_models) or "-"),
        ("keys hit / answered", f"{a.keys_hit} / {a.keys_answered}"),
        ("FSR (CI)", fmt_rate(a.fsr, a.fsr_ci)),
        ("null hit rate p0", f"{a.p0:.3g} (baseline {a.baseline[0]}/{a.baseline[1]})"),
        ("p-value (verdict)", fmt_p(a.p_value)),
        ("p binomial / sequential", f"{fmt_p(a.p_binomial)} / {fmt_p(a.p_sequential)}"),
        ("p Fisher (keys vs controls)", fmt_p(a.p_fisher)),
        (f"p corrected ({r.correction}, batch of {r.batch_size})", fmt_p(r.p_corrected)),
        ("alpha", f"{r.alpha:g}"),
        ("e-value (max log e)", f"{a.e_value:.3g} ({a.log_e_max:.2f})"),
        ("control over-generalization", fmt_rate(a.control_rate, a.control_ci)),
        ("filtering p / flag", f"{fmt_p(a.filtering_p)} / {a.filtering_flag}"),
        ("commitment", {True: "matches key set", False: "MISMATCH",
                        None: "not checked"}[r.commitment_ok]),
        ("commitment digest", str(r.commitment.get("digest", "-"))),
        ("evidence chain head", f"{r.chain_head} ({r.chain_count} records)"),
        ("time", f"{r.started} .. {r.finished}"),
        ("queries / tokens / cost", f"{r.queries} / {sum(r.tokens.values())} / "
         f"{'-' if r.cost_usd is None else f'${r.cost_usd:.4f}'}"),
    ]


def count_rows(a: Analysis) -> list[list[str]]:
    cols = ("prompts", "samples", "hits", "hit_samples", "refusals", "errors")
    return [[cat, *(str(a.counts[cat].get(c, 0)) for c in cols)]
            for cat in sorted(a.counts, key=_category_order)]


def _category_order(cat: str) -> tuple[int, str]:
    return (CATEGORIES.index(cat) if cat in CATEGORIES else len(CATEGORIES), cat)


COUNT_HEADER = ("category", "prompts", "samples", "hits (prompts)", "hit samples",
                "refusals", "errors")


def to_markdown(report: Report) -> str:
    a = report.analysis
    lines = [f"# Audit {report.audit_id}: {report.verdict}", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {_md(v)} |" for k, v in summary_rows(report)]
    lines += ["", "## Counts", "", "| " + " | ".join(COUNT_HEADER) + " |",
              "|" + "---|" * len(COUNT_HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in count_rows(a)]
    lines += ["", "## Keys", "", "| key | hit samples | answered samples |", "|---|---|---|"]
    lines += [f"| {_md(k)} | {h} | {n} |" for k, (h, n) in a.per_key.items()]
    if a.notes:
        lines += ["", "## Notes", ""] + [f"- {_md(n)}" for n in a.notes]
    lines += ["", "## Settings", "", "```json",
              json.dumps(a.settings, indent=1, sort_keys=True), "```", ""]
    return "\n".join(lines)


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
