"""Rich console rendering of reports: a verdict panel and tables."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from auditor.report import COUNT_HEADER, count_rows, fmt_p, fmt_rate, summary_rows

if TYPE_CHECKING:
    from rich.console import Console

    from auditor.report import Report

STYLE = {"OWNED": "bold green", "NOT DETECTED": "bold yellow",
         "SUSPECTED FILTERING": "bold magenta", "ERROR": "bold red"}
MAX_KEY_ROWS = 60


def _verdict_panel(report: Report) -> Panel:
    a = report.analysis
    line = Text(report.verdict, style=STYLE.get(report.verdict, "bold"))
    line.append(
        f"\n{a.keys_hit} of {a.keys_answered} keys fired; corrected p = "
        f"{fmt_p(report.p_corrected)} at alpha {report.alpha:g}", style="default")
    return Panel(line, title=f"audit {report.audit_id} - {report.endpoint_id}", expand=False)


def render_report(report: Report, console: Console) -> None:
    console.print(_verdict_panel(report))
    summary = Table(title="Summary", show_header=False)
    summary.add_column("item", style="bold")
    summary.add_column("value", overflow="fold")
    for key, value in summary_rows(report)[1:]:
        summary.add_row(key, value)
    console.print(summary)
    counts = Table(title="Counts per category")
    for col in COUNT_HEADER:
        counts.add_column(col, justify="left" if col == "category" else "right")
    for row in count_rows(report.analysis):
        counts.add_row(*row)
    console.print(counts)
    console.print(_key_table(report))
    for note in report.analysis.notes:
        console.print(f"[dim]note:[/dim] {escape(note)}", highlight=False)


def _key_table(report: Report) -> Table:
    table = Table(title="Per-key hits")
    for col in ("key", "hit samples", "answered samples", "fired"):
        table.add_column(col, justify="left" if col == "key" else "right")
    items = list(report.analysis.per_key.items())
    rule = report.analysis.settings.get("key_rule", "any")
    for kid, (hits, n) in items[:MAX_KEY_ROWS]:
        fired = hits > 0 if rule == "any" else 2 * hits > n
        table.add_row(kid, str(hits), str(n), "[green]yes[/green]" if fired else "no")
    if len(items) > MAX_KEY_ROWS:
        table.add_row(f"... {len(items) - MAX_KEY_ROWS} more", "", "", "")
    return table


def render_batch(reports: list[Report], console: Console) -> None:
    table = Table(title="Audit batch")
    for col in ("endpoint", "model", "keys hit", "FSR (CI)", "p raw", "p corrected", "verdict"):
        table.add_column(col)
    for r in reports:
        a = r.analysis
        table.add_row(
            r.endpoint_id, ", ".join(r.resolved_models) or "-",
            f"{a.keys_hit}/{a.keys_answered}", fmt_rate(a.fsr, a.fsr_ci), fmt_p(a.p_value),
            fmt_p(r.p_corrected), Text(r.verdict, style=STYLE.get(r.verdict, "bold")),
        )
    console.print(table)
