"""`auditor audit` (one endpoint, resumable) and `auditor batch` (a TOML file of endpoints)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from auditor.errors import UserError

if TYPE_CHECKING:
    from rich.console import Console

    from auditor.evidence import EvidenceStore, Quarantined
    from auditor.finish import Finished
    from auditor.keys import KeySet
    from auditor.plan import CampaignSettings, Plan

STORE = typer.Option("--store", help="evidence store (SQLite, 0600)")
OUT = typer.Option("--out", help="bundles go to OUT/<audit-id>/")


def _settings(key_ids: str | None, controls: float, decoys: float, samples: int,
              temperature: list[float], max_tokens: int, system_prompt: str | None,
              max_queries: int | None, alpha: float, key_rule: str,
              sequential: bool) -> CampaignSettings:
    from auditor.plan import CampaignSettings

    ids = tuple(k.strip() for k in key_ids.split(",") if k.strip()) if key_ids else ()
    if max_tokens < 1:
        raise UserError("--max-tokens must be at least 1")
    return CampaignSettings(key_ids=ids, controls_per_key=controls, decoys_per_key=decoys,
                            samples=samples, temperatures=tuple(temperature or [0.0]),
                            max_tokens=max_tokens, system_prompt=system_prompt,
                            max_queries=max_queries, alpha=alpha, key_rule=key_rule,
                            sequential=sequential)


def _print_plan(plans: list[Plan], console: Console) -> None:
    from rich.table import Table

    from auditor.costs import estimate_plan

    table = Table(title="audit plan (dry run: nothing sent)")
    for col in ("endpoint", "keys", "controls", "decoys", "queries (budget)", "input tokens",
                "output tokens (max)", "cost USD (max)"):
        table.add_column(col, justify="left" if col == "endpoint" else "right")
    for plan in plans:
        c, est = plan.counts(), estimate_plan(plan)
        cost = "unknown price" if est.cost_usd is None else f"{est.cost_usd:.4f}"
        table.add_row(plan.endpoint.name, str(c["key"]), str(c["control"]), str(c["decoy"]),
                      f"{len(plan.queries)} ({est.queries})", f"~{est.input_tokens}",
                      str(est.output_tokens), cost)
    console.print(table)


def _run(plans: list[tuple[Plan, KeySet]], store: EvidenceStore, *, live: bool, out: Path,
         reveal: bool, signing_key: Path | None, alpha: float, correction: str,
         console: Console, single: bool = False) -> list[Finished]:
    from auditor.batch import run_plans
    from auditor.finish import finalize, write_bundles
    from auditor.live import LiveView

    try:
        with LiveView(enabled=live) as view:
            done = asyncio.run(run_plans(plans, store, listener=view))
    except KeyboardInterrupt:
        ids = " ".join(p.audit_id for p, _ in plans)
        console.print(f"interrupted; evidence so far is kept. Resume with "
                      f"`auditor audit --resume AUDIT_ID` ({ids})", markup=False)
        raise typer.Exit(130) from None
    for d in done:
        for q in d.result.quarantined:
            _say_quarantined(q, console)
    if single:
        _refuse_single(done[0])
    finalize(done, store, alpha, correction)
    write_bundles([d for d in done if d.result.error_kind != "damaged"], store, out,
                  reveal=reveal, signing_key=signing_key)
    return done


def _say_quarantined(q: Quarantined, console: Console) -> None:
    console.print(f"quarantined torn record {q.seq} of audit {q.audit_id}: {q.reason} "
                  "(not trusted; its query will be asked again)", markup=False)


def _repair(store: EvidenceStore, audit_ids: list[str], console: Console) -> None:
    """Quarantine torn last records now and say so before anything is sent."""
    for audit_id in audit_ids:
        q = store.repair_tail(audit_id)
        if q is not None:
            _say_quarantined(q, console)


def _refuse_single(item: Finished) -> None:
    """A lone endpoint that could not be audited at all: one message, no report or bundle."""
    from auditor.errors import AuditFailed

    kind, error = item.result.error_kind, item.result.error or ""
    if kind in ("config", "unreachable"):
        raise UserError(error)
    if kind == "damaged":
        raise AuditFailed(error)


def _exit_code(done: list[Finished]) -> int:
    return 0 if all(d.result.status == "completed" for d in done) else 1


def _offer_resume(store: EvidenceStore, name: str, keyset: KeySet, fresh: bool,
                  console: Console) -> str | None:
    from auditor.audit import unfinished

    if fresh:
        return None
    previous = unfinished(store, name, str(keyset.commitment()["digest"]))
    if not previous:
        return None
    last = previous[-1]
    if sys.stdin.isatty() and typer.confirm(f"Audit {last} of {name} did not finish. "
                                            "Resume it?", default=True):
        return last
    console.print(f"note: unfinished audit {last} of {name}; continue it with "
                  f"`auditor audit --resume {last}` (starting a new audit)", markup=False)
    return None


def _resumed(store: EvidenceStore, audit_id: str, keys: Path | None) -> tuple[Plan, KeySet]:
    from auditor.audit import check_keyset_matches
    from auditor.keys import KeySet
    from auditor.plan import Plan

    plan = Plan.from_dict(store.audit(audit_id).plan)
    keyset = KeySet.load(keys or plan.key_file)
    check_keyset_matches(plan, keyset)
    return plan, keyset


def audit(
    endpoint: Annotated[str | None, typer.Argument(
        help="provider spec, e.g. openai:gpt-4o-mini or compat:http://host/v1#model")] = None,
    keys: Annotated[Path | None, typer.Option("--keys", help="key file (keys/NAME.json)")] = None,
    resume: Annotated[str | None, typer.Option("--resume", help="continue AUDIT_ID")] = None,
    name: Annotated[str | None, typer.Option(help="endpoint id in evidence")] = None,
    base_url: Annotated[str | None, typer.Option(help="override the API base URL")] = None,
    credential_env: Annotated[str | None, typer.Option(help="env var with the API key")] = None,
    concurrency: Annotated[int, typer.Option(help="requests in flight")] = 8,
    rpm: Annotated[float | None, typer.Option(help="requests per minute limit")] = None,
    timeout: Annotated[float, typer.Option(help="seconds per attempt")] = 60.0,
    key_ids: Annotated[str | None, typer.Option(help="subset of keys: k000,k003")] = None,
    controls: Annotated[float, typer.Option(help="control keys per committed key")] = 1.0,
    decoys: Annotated[float, typer.Option(help="ordinary decoy prompts per key")] = 1.0,
    samples: Annotated[int, typer.Option(help="samples per prompt and temperature")] = 1,
    temperature: Annotated[list[float] | None, typer.Option(help="repeatable")] = None,
    max_tokens: Annotated[int, typer.Option(help="answer length limit")] = 64,
    system_prompt: Annotated[str | None, typer.Option(help="wrap prompts in it")] = None,
    max_queries: Annotated[int | None, typer.Option(help="query budget")] = None,
    alpha: Annotated[float, typer.Option(help="significance level")] = 0.01,
    key_rule: Annotated[str, typer.Option(help="any | majority")] = "any",
    sequential: Annotated[bool, typer.Option(help="stop once the claim holds")] = True,
    store: Annotated[Path, STORE] = Path("reports/evidence.sqlite"),
    out: Annotated[Path, OUT] = Path("reports"),
    dry_run: Annotated[bool, typer.Option(help="print the plan and cost only")] = False,
    reveal: Annotated[bool, typer.Option(help="put key texts in the bundle")] = False,
    signing_key: Annotated[Path | None, typer.Option(help="Ed25519 key")] = None,
    live: Annotated[bool, typer.Option(help="live progress view")] = True,
    fresh: Annotated[bool, typer.Option(help="never offer to resume")] = False,
) -> None:
    """Audit one endpoint: keys hidden among decoys, evidence recorded, verdict and bundle."""
    from rich.console import Console

    from auditor.audit import check_endpoint
    from auditor.evidence import EvidenceStore
    from auditor.keys import KeySet
    from auditor.plan import EndpointConfig, build_plan, new_audit_id
    from auditor.report import render_console

    console = Console()
    if resume is None and (endpoint is None or keys is None):
        raise UserError("give ENDPOINT and --keys, or --resume AUDIT_ID")
    settings = _settings(key_ids, controls, decoys, samples, temperature or [0.0], max_tokens,
                         system_prompt, max_queries, alpha, key_rule, sequential)
    if dry_run and resume is None:
        assert endpoint is not None and keys is not None
        ep = EndpointConfig(name or endpoint, endpoint, base_url, credential_env, concurrency,
                            rpm, timeout)
        _print_plan([build_plan("dry-run", ep, KeySet.load(keys), str(keys), settings)], console)
        return
    with EvidenceStore(store) as ev:
        if resume is None:
            assert endpoint is not None and keys is not None
            keyset = KeySet.load(keys)
            ep = EndpointConfig(name or endpoint, endpoint, base_url, credential_env,
                                concurrency, rpm, timeout)
            resume = _offer_resume(ev, ep.name, keyset, fresh, console)
        if resume is not None:
            plan, keyset = _resumed(ev, resume, keys)
            check_endpoint(plan.endpoint)
            _repair(ev, [plan.audit_id], console)
            console.print(f"resuming audit {plan.audit_id}", markup=False)
        else:
            check_endpoint(ep)  # bad spec or credential: refused before any audit exists
            plan = build_plan(new_audit_id(ep.name), ep, keyset, str(keys), settings)
            ev.create_audit(plan.audit_id, ep.name, plan.to_dict())
        if dry_run:
            _print_plan([plan], console)
            return
        done = _run([(plan, keyset)], ev, live=live, out=out, reveal=reveal,
                    signing_key=signing_key, alpha=plan.settings.alpha, correction="none",
                    console=console, single=True)
    item = done[0]
    assert item.report is not None
    render_console(item.report, console)
    if item.result.error:
        console.print(f"endpoint error: {item.result.error}", markup=False)
    console.print(f"audit {plan.audit_id}: bundle {item.bundle}", markup=False)
    raise typer.Exit(_exit_code(done))


def batch(
    file: Annotated[Path, typer.Argument(help="endpoints TOML file")],
    keys: Annotated[Path | None, typer.Option("--keys", help="default key file")] = None,
    controls: Annotated[float, typer.Option(help="control keys per committed key")] = 1.0,
    decoys: Annotated[float, typer.Option(help="ordinary decoy prompts per key")] = 1.0,
    samples: Annotated[int, typer.Option(help="samples per prompt")] = 1,
    max_tokens: Annotated[int, typer.Option(help="answer length limit")] = 64,
    alpha: Annotated[float, typer.Option(help="family-wise significance level")] = 0.01,
    key_rule: Annotated[str, typer.Option(help="any | majority")] = "any",
    correction: Annotated[str, typer.Option(help="holm | bh")] = "holm",
    sequential: Annotated[bool, typer.Option(help="stop once the claim holds")] = True,
    store: Annotated[Path, STORE] = Path("reports/evidence.sqlite"),
    out: Annotated[Path, OUT] = Path("reports"),
    dry_run: Annotated[bool, typer.Option(help="print the plans and cost only")] = False,
    reveal: Annotated[bool, typer.Option(help="put key texts in the bundles")] = False,
    signing_key: Annotated[Path | None, typer.Option(help="Ed25519 key")] = None,
    live: Annotated[bool, typer.Option(help="live progress view")] = True,
    fresh: Annotated[bool, typer.Option(help="do not resume unfinished audits")] = False,
) -> None:
    """Audit every endpoint of a TOML file at once; Holm-corrected batch report."""
    from rich.console import Console

    from auditor.batch import load_batch, load_keysets, prepare, stopping_settings
    from auditor.evidence import EvidenceStore
    from auditor.plan import build_plan
    from auditor.report import render_batch_console

    console = Console()
    if correction not in ("holm", "bh"):
        raise UserError("--correction must be holm or bh")
    entries = load_batch(file, str(keys) if keys else None)
    keysets = load_keysets(entries)
    base = stopping_settings(_settings(None, controls, decoys, samples, [0.0], max_tokens, None,
                                       None, alpha, key_rule, sequential), len(entries))
    if dry_run:
        _print_plan([build_plan("dry-run", e.endpoint, keysets[e.key_file], e.key_file,
                                e.settings(base)) for e in entries], console)
        return
    with EvidenceStore(store) as ev:
        plans = prepare(entries, keysets, base, ev, resume=not fresh)
        _repair(ev, [p.audit_id for p, _ in plans], console)
        done = _run(plans, ev, live=live, out=out, reveal=reveal, signing_key=signing_key,
                    alpha=alpha, correction=correction, console=console)
    render_batch_console([d.report for d in done if d.report is not None], console)
    for d in done:
        note = f" ({d.result.error})" if d.result.error else ""
        console.print(f"{d.plan.endpoint.name}: {d.plan.audit_id} → {d.bundle}{note}",
                      markup=False)
    raise typer.Exit(_exit_code(done))


def register(app: typer.Typer) -> None:
    """Add this group's verbs to the app."""
    app.command("audit")(audit)
    app.command("batch")(batch)
