"""Self-contained HTML report: inline CSS, charts as embedded PNG (matplotlib), no scripts."""

from __future__ import annotations

import base64
import io
import math
from html import escape
from typing import TYPE_CHECKING, Any

from auditor.report import COUNT_HEADER, count_rows, summary_rows

if TYPE_CHECKING:
    from auditor.report import Report

COLORS = {"OWNED": "#1a7f37", "NOT DETECTED": "#9a6700", "SUSPECTED FILTERING": "#8250df",
          "ERROR": "#cf222e"}
CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:960px;color:#1f2328}
h1{font-size:1.5em} .verdict{font-size:1.8em;font-weight:700;padding:.4em .8em;
border-radius:6px;color:#fff;display:inline-block}
table{border-collapse:collapse;margin:1em 0} td,th{border:1px solid #d0d7de;padding:.3em .6em;
text-align:left;font-size:.9em} th{background:#f6f8fa} img{max-width:100%}
.mono{font-family:ui-monospace,monospace;word-break:break-all}
"""


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figures(report: Report) -> tuple[str, str]:
    """Per-key hit chart and e-process trajectory, as base64 PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    a = report.analysis
    fig = Figure(figsize=(8, 2.8))
    ax = fig.add_subplot()
    ids = list(a.per_key)
    rates = [h / n if n else 0.0 for h, n in a.per_key.values()]
    ax.bar(range(len(ids)), rates, color="#1a7f37")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("hit share of samples")
    ax.set_xticks(range(len(ids)), ids if len(ids) <= 40 else [""] * len(ids), rotation=90,
                  fontsize=6)
    ax.set_title("Per-key hits")
    fig.tight_layout()
    keys_png = _png(fig)

    fig = Figure(figsize=(8, 2.8))
    ax = fig.add_subplot()
    xs = [t for t, _, _ in a.trajectory]
    ys = [lv / math.log(10) for _, _, lv in a.trajectory]
    ax.plot(xs, ys, marker=".", color="#0969da", label="log10 e-value")
    ax.axhline(math.log10(1.0 / report.alpha), color="#cf222e", linestyle="--",
               label="claim threshold log10(1/alpha)")
    ax.set_xlabel("keys answered")
    ax.set_ylabel("log10 E")
    ax.set_title("Sequential evidence")
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    return keys_png, _png(fig)


def _table(header: tuple[str, ...] | None, rows: list[list[str]]) -> str:
    out = ["<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr>")
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def render_html(report: Report) -> str:
    a = report.analysis
    keys_png, traj_png = _figures(report)
    color = COLORS.get(report.verdict, "#57606a")
    summary = [[k, v] for k, v in summary_rows(report)[1:]]
    keys = [[k, str(h), str(n)] for k, (h, n) in a.per_key.items()]
    notes = "".join(f"<li>{escape(n)}</li>" for n in a.notes)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; \
style-src 'unsafe-inline'">
<title>Audit {escape(report.audit_id)}: {escape(report.verdict)}</title>
<style>{CSS}</style></head>
<body>
<h1>Fingerprint audit {escape(report.audit_id)} &mdash; {escape(report.endpoint_id)}</h1>
<div class="verdict" id="verdict" style="background:{color}">{escape(report.verdict)}</div>
<h2>Summary</h2>
{_table(None, summary)}
<h2>Counts per category</h2>
{_table(COUNT_HEADER, count_rows(a))}
<h2>Charts</h2>
<img id="keys-chart" alt="per-key hits" src="data:image/png;base64,{keys_png}">
<img id="trajectory-chart" alt="sequential evidence" src="data:image/png;base64,{traj_png}">
<h2>Per-key hits</h2>
{_table(("key", "hit samples", "answered samples"), keys)}
<h2>Notes</h2><ul>{notes}</ul>
<p class="mono">report schema 1</p>
</body></html>
"""
