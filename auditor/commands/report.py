"""`auditor report DIR`, `verify DIR`, `verify-store`, `plan`: bundles, stores, planning."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from auditor.errors import UserError


def report_cmd(
    bundle: Annotated[Path, typer.Argument(help="A bundle directory (reports/<audit-id>).")],
) -> None:
    """Re-render a bundle's report in the terminal (run `auditor verify` to check it)."""
    import json

    from rich.console import Console

    from auditor.report import Report, render_console

    path = bundle / "report.json"
    if not path.is_file():
        raise UserError(f"{bundle} is not a bundle directory (no report.json)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} cannot be read ({type(exc).__name__})") from None
    render_console(Report.from_dict(data), Console(highlight=False))


def verify_cmd(
    bundle: Annotated[Path, typer.Argument(help="A bundle directory (reports/<audit-id>).")],
    key: Annotated[
        str | None,
        typer.Option(help="Expected signer: public key hex or its ed25519:... fingerprint."),
    ] = None,
) -> None:
    """Check a bundle offline: hashes, signature, chain, commitment, every statistic."""
    from rich.console import Console

    from auditor.bundle import verify_bundle

    result = verify_bundle(bundle, expected_key=key)
    con = Console(highlight=False)
    for name, ok, detail in result.checks:
        mark = "[green]ok[/]  " if ok else "[red]FAIL[/]"
        con.print(f"{mark} {name}: {detail}", markup=True)
    if result.ok:
        con.print(f"[bold green]PASS[/] {bundle} (signed by {result.public_key})")
        return
    con.print(f"[bold red]FAIL[/]: {result.reason}")
    raise typer.Exit(1)


def verify_store_cmd(
    store: Annotated[Path, typer.Argument(help="An evidence store (SQLite).")] = Path(
        "reports/evidence.sqlite"),
    audit: Annotated[str | None, typer.Option(help="Only this audit id.")] = None,
) -> None:
    """Check every audit's hash chain in an evidence store; names the first bad record."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from auditor.evidence import EvidenceStore

    if not store.is_file():
        raise UserError(f"no evidence store at {store}")
    con = Console(highlight=False)
    table = Table(title=f"evidence store {store}")
    for col in ("audit", "endpoint", "status", "records", "quarantined", "chain head", "check"):
        table.add_column(col)
    bad = 0
    with EvidenceStore(store) as ev:
        rows = [ev.audit(audit)] if audit else ev.audits()
        for row in rows:
            check = ev.verify(row.audit_id)
            held = len(ev.quarantined(row.audit_id))
            verdict = Text("ok", "green") if check.ok else \
                Text(f"FAIL at record {check.first_bad_seq}: {check.reason}", "red")
            bad += not check.ok
            table.add_row(Text(row.audit_id), Text(row.endpoint_id), row.status,
                          str(check.count), str(held), check.head[:16], verdict)
    con.print(table)
    if not rows:
        con.print("no audits in this store")
    if bad:
        con.print(f"[bold red]FAIL[/]: {bad} of {len(rows)} audit chain(s) broken")
        raise typer.Exit(1)
    con.print(f"[bold green]PASS[/]: {len(rows)} audit chain(s) intact")


def plan_cmd(
    keys: Annotated[int, typer.Option("--keys", help="Keys in the set (queries available).")],
    fsr: Annotated[float, typer.Option(help="Expected fingerprint success rate, 0-1.")] = 0.5,
    alpha: Annotated[float, typer.Option(help="False-claim rate to guarantee.")] = 0.01,
    p0: Annotated[
        float | None, typer.Option(help="Null hit rate per key (default: the analysis floor).")
    ] = None,
    power: Annotated[float, typer.Option(help="Wanted chance to detect an owned model.")] = 0.99,
    confidence: Annotated[float, typer.Option(help="Level of the baseline bound.")] = 0.95,
) -> None:
    """Key queries needed to detect a fingerprinted endpoint, and the power with --keys."""
    from rich.console import Console
    from rich.table import Table

    from auditor import stats
    from auditor.scoring import AnalysisSettings

    if keys < 1:
        raise UserError("--keys must be at least 1")
    if not 0.0 < fsr <= 1.0:
        raise UserError("--fsr must be in (0, 1]")
    null = AnalysisSettings().floor if p0 is None else p0
    AnalysisSettings(alpha=alpha, floor=null, p0_confidence=confidence)  # validates
    table = Table(title=f"Plan: FSR {fsr:g}, alpha {alpha:g}, p0 {null:g}")
    for col in ("test", "queries for power", f"power with {keys} keys"):
        table.add_column(col)
    for name, seq in (("sequential (e-process, may stop early)", True),
                      ("fixed (exact binomial)", False)):
        need = stats.queries_needed(fsr, alpha, null, power=power, sequential=seq)
        have = (stats.power_sequential if seq else stats.power_binomial)(keys, fsr, alpha, null)
        table.add_row(name, "> 1000" if need is None else str(need), f"{have:.4f}")
    con = Console(highlight=False)
    con.print(table)
    con.print(f"hit-free baseline prompts (decoys) for p0 <= {null:g}: "
              f"{stats.baseline_needed(null, confidence)} (one-sided {confidence:g} bound)")
    need = stats.queries_needed(fsr, alpha, null, power=power)
    if need is None or need > keys:
        con.print(f"[yellow]{keys} keys are not enough for power {power:g}; "
                  "draw a larger key set[/]")


def register(app: typer.Typer) -> None:
    """Add `report`, `verify` and `plan`."""
    app.command("report")(report_cmd)
    app.command("verify")(verify_cmd)
    app.command("verify-store")(verify_store_cmd)
    app.command("plan")(plan_cmd)
