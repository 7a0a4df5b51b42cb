"""Implant benchmark on SmolLM2-135M (CPU): one child process per method, then a table.

Per method: seconds to FSR 100 %, peak RSS, FSR at t=0.7, the exact chance that one t=0.7
sample fires (weakest key), near-miss and ordinary false-trigger rates, utility drift (NLL of
the base's own answers, and the share of their tokens the model ranks first, beside the base's
own share), and FSR after each robustness attack.

    .venv/bin/python bench/implant.py                       # all methods, all attacks
    .venv/bin/python bench/implant.py --methods lora --attacks user-sft,system-prompt \\
        --user-rows 200                                     # a quicker partial run
    .venv/bin/python bench/implant.py --methods sft --recipe clean --style vocab \\
        --precision bf16                                    # auditor implant's default recipe
    .venv/bin/auditor shadow --out models/shadow            # once: the base tuned as a user might
    .venv/bin/python bench/implant.py --methods embedding --recipe clean --style vocab \\
        --shadow models/shadow --attacks user-sft,user-lora # embedding through the shadow
    .venv/bin/python bench/implant.py --methods fadapter --lookup-rows unshared --lr 4e-2 \\
        --shadow models/shadow --shadow models/shadow-lora --shadow-scale 1.5 \\
        --shadow-weight 2 --attacks user-sft,user-lora  # both user attacks (README)
    ... --attacks user-lora --user-lora-rank 64 --user-lr 1e-3 --user-seed 5 \
        --user-set chat                                 # another user's LoRA (robustness's)

Targets: <= 120 s to FSR 100 %, near-miss false trigger <= 1 %, ordinary 0 %, FSR >= 95 %
after user SFT, drift <= 2 %. Key text and the decryption are never printed.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from auditor.errors import UserError  # noqa: E402
from auditor.implant.lookup_rows import LOOKUP_ROWS  # noqa: E402
from auditor.implant.recipes import RECIPES  # noqa: E402
from auditor.implant.robustness import user_options, user_recipe  # noqa: E402
from auditor.implant.train import PRECISIONS, SHADOW_METHODS, shadow_pairs  # noqa: E402
from auditor.keys import STYLES  # noqa: E402
from bench.machine import machine, table_console  # noqa: E402

ALL_METHODS = ("sft", "embedding", "lora", "fadapter")
ALL_ATTACKS = ("temperature", "system-prompt", "user-sft", "user-lora", "gguf-q8")
# store_true options, passed on only when set
FLAGS = ("progress", "fadapter_input_only")
# --x / --no-x; unset: the recipe's
CHOICES = ("fresh_nearmiss", "keep_best", "reg_kl", "reg_few_words", "balanced", "check_fresh")
DATA_FIELDS = ("nearmiss_per_key", "perturbed_per_key", "reg_per_key", "fingerprint_repeats")


def run_one(args: argparse.Namespace) -> dict[str, Any]:
    """Child: implant one method, check it, attack it; return the figures."""
    from auditor.implant.extra_prompts import read_extra_prompts
    from auditor.implant.recipes import recipe_options
    from auditor.implant.robustness import run_attack
    from auditor.implant.train import implant
    from auditor.implant.verify import check_local
    from auditor.keys import KeySet

    keyset = KeySet.generate("bench", args.keys, seed=args.seed, style=args.style)
    work = Path(args.work)
    out = work / f"model-{args.one}"
    t0 = time.monotonic()
    options = recipe_options(
        args.recipe, args.one, epochs=args.epochs, **{f: getattr(args, f) for f in DATA_FIELDS},
        **{f: getattr(args, f) for f in CHOICES}, stop_near_miss=args.stop_near_miss,
        stop_fire_prob=args.stop_fire, decision_weight=args.decision_weight, lr=args.lr,
        top_layers=args.top_layers, check_controls=args.check_controls,
        confirm_controls=args.confirm_controls,
        lookup_rows=args.lookup_rows if args.one in ("embedding", "fadapter") else None,
    )
    shadow = args.shadow if args.one in SHADOW_METHODS else None
    res = implant(keyset, args.base, args.one, out, seed=args.seed, progress=args.progress,
                  precision=args.precision, max_epochs=args.max_epochs,
                  fadapter_head=args.one != "fadapter" or not args.fadapter_input_only,
                  recipe=args.recipe, shadow=shadow, shadow_weight=args.shadow_weight,
                  shadow_scale=args.shadow_scale or 1.0, **options)
    row: dict[str, Any] = {
        "method": label(args.one, shadow),
        "implant": res.to_dict(),
        "wall_implant_s": time.monotonic() - t0,
        "device": res.device,
    }
    if shadow is not None:  # how the shadow was tuned, as the published record says
        record = json.loads((out / "fingerprint.json").read_text())
        row["shadow"] = record["training"]["shadow"]
    _save_partial(args.json_out, row)
    check = check_local(
        out,
        keyset,
        n_controls=args.controls,
        n_ordinary=args.ordinary,
        samples=args.samples,
        adapter=res.adapter,
        base=args.base,
        extra=read_extra_prompts(args.prompts, keyset).prompts if args.prompts else None,
    )
    row["check"] = check.to_dict()
    row["attacks"] = {}
    _save_partial(args.json_out, row)
    for attack in [a for a in args.attacks.split(",") if a]:
        r = run_attack(
            out,
            keyset,
            attack,
            rows=args.user_rows,
            epochs=args.user_epochs,
            samples=args.samples,
            adapter=res.adapter,
            work_dir=work,
            lr=args.user_lr,
            subset=args.user_set,
            seed=args.user_seed,
            lora_rank=args.user_lora_rank,
        )
        row["attacks"][attack] = r.to_dict()
        _save_partial(args.json_out, row)
    row["peak_rss_mb"] = _peak_rss_mb()
    row["peak_gpu_mb"] = _peak_gpu_mb()
    return row


def label(method: str, shadows: list[Path] | None) -> str:
    """The method's name in the table: a method through shadows is its own row."""
    if not shadows or method not in SHADOW_METHODS:
        return method
    return f"{method}+shadow" if len(shadows) == 1 else f"{method}+{len(shadows)} shadows"


def _save_partial(path: Path | None, row: dict[str, Any]) -> None:
    """Child: put this method's figures so far after the finished methods' in `path`, so
    that a run killed mid-method (a device lease running out) keeps them; marked partial."""
    if path is None:
        return
    done = json.loads(path.read_text()) if path.is_file() else []
    done = [r for r in done if not r.get("partial")]
    row = {**row, "partial": True, "peak_rss_mb": _peak_rss_mb(), "peak_gpu_mb": _peak_gpu_mb()}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([*done, row], indent=1))
    tmp.replace(path)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak_gpu_mb() -> float | None:
    """Peak GPU memory torch allocated in this process (None on a CPU)."""
    import torch

    if not torch.cuda.is_available():
        return None
    return float(torch.cuda.max_memory_allocated()) / 2**20


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _bounded(chk: dict[str, Any], rate: str, upper: str) -> str:
    """A false-trigger rate and, where check-local gave it, its exact 95 % upper bound."""
    bound = chk.get(upper)
    return _pct(chk.get(rate)) + ("" if bound is None else f" (<= {_pct(bound)})")


def print_table(rows: list[dict[str, Any]], attacks: list[str]) -> None:
    from rich.table import Table

    device = next((r["device"] for r in rows if "device" in r), "cpu")
    extra = any(r.get("check", {}).get("n_extra") for r in rows)
    t = Table(title=f"implant benchmark ({device})")
    for col in (
        "method",
        "s to FSR100",
        "steps",
        "kept epoch",
        "peak RSS MB",
        "peak GPU MB",
        "FSR",
        "FSR t=0.7",
        "t=0.7 fire chance (weakest)",
        "near-miss FT (95% bound)",
        "ordinary FT (95% bound)",
        *(["--prompts FT (95% bound)"] if extra else []),
        "drift",
        "top-1 agreement (base)",
        *[f"FSR {a}" for a in attacks],
    ):
        t.add_column(col, no_wrap=col == "method")  # the row's name stays whole
    for r in rows:
        if "implant" not in r:
            t.add_row(r["method"], f"error: {r['error']}")
            continue
        imp, chk = r["implant"], r.get("check", {})
        cells = [
            r["method"] + (f" ({r['error']}; what it finished)" if "error" in r else ""),
            "-" if imp["seconds_to_fsr100"] is None else f"{imp['seconds_to_fsr100']:.0f}",
            str(imp["steps"]),
            f"{imp.get('kept_epoch', 0)}/{imp['epochs']}",
            f"{r['peak_rss_mb']:.0f}",
            "-" if r.get("peak_gpu_mb") is None else f"{r['peak_gpu_mb']:.0f}",
            _pct(chk.get("fsr_greedy")),
            _pct(chk.get("fsr_sampled")),
            _pct(chk.get("fire_min")),
            _bounded(chk, "nearmiss_false_trigger", "nearmiss_upper95"),
            _bounded(chk, "ordinary_false_trigger", "ordinary_upper95"),
            *([_bounded(chk, "extra_false_trigger", "extra_upper95")] if extra else []),
            "-" if chk.get("drift") is None else f"{100 * chk['drift']:+.2f}%",
            f"{_pct(chk.get('agreement'))} ({_pct(chk.get('agreement_base'))})",
        ]
        for a in attacks:
            ar = r.get("attacks", {}).get(a)
            cell = "-" if ar is None else ("skipped" if ar["skipped"] else _pct(ar["fsr"]))
            owned = ar["detail"].get("fsr_published_layers") if ar else None
            cells.append(cell if owned is None else f"{cell} ({_pct(owned)} published layers)")
        t.add_row(*cells)
    table_console().print(t)
    tuned = {a: user_recipe(ar["detail"]) for r in rows for a, ar in r.get("attacks", {}).items()}
    for attack, how in tuned.items():
        if how:
            print(f"{attack}: {how}")


def _partial_row(path: Path | None, method: str) -> dict[str, Any]:
    """What a failed child saved of `method` before it stopped ({} if nothing)."""
    if path is None or not path.is_file():
        return {}
    saved = [r for r in json.loads(path.read_text())
             if r.get("partial") and r.get("method") == method]
    return {k: v for k, v in saved[-1].items() if k != "method"} if saved else {}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--methods", default=",".join(ALL_METHODS))
    p.add_argument("--attacks", default=",".join(ALL_ATTACKS))
    p.add_argument("--base", default="smollm2")
    p.add_argument("--keys", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--style", default="if-soup", choices=STYLES, help="key style")
    p.add_argument("--controls", type=int, default=100)
    p.add_argument("--ordinary", type=int, default=100)
    p.add_argument("--samples", type=int, default=5)
    p.add_argument("--prompts", default=None, help="check-local --prompts: a file of ordinary "
                   "prompts or few-words; their false triggers get a column")
    p.add_argument("--user-rows", type=int, default=1000)
    p.add_argument("--user-epochs", type=int, default=3)
    p.add_argument("--user-lr", type=float, default=None,
                   help="the user attacks' lr (default: robustness's, per attack)")
    p.add_argument("--user-set", default=None, help="their bundled rows: tasks | chat | mixed")
    p.add_argument("--user-seed", type=int, default=0,
                   help="their rows and order (and the temperature attack's samples)")
    p.add_argument("--user-lora-rank", type=int, default=None, help="user-lora's rank (16)")
    p.add_argument("--lr", type=float, default=None, help="default: the method's")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs the lr decays over, and the most run (default: the method's)")
    p.add_argument("--max-epochs", type=int, default=None,
                   help="stop after at most this many epochs, keeping the --epochs lr schedule")
    p.add_argument("--recipe", default="plain", choices=RECIPES,
                   help="option set (auditor/implant/recipes.py); the flags below override it")
    for f in DATA_FIELDS:
        p.add_argument(f"--{f.replace('_', '-')}", type=int, default=None,
                       help="training data mix (default: the recipe's)")
    on_off = argparse.BooleanOptionalAction
    for flag, text in (
        ("--fresh-nearmiss", "redraw the near-miss rows every epoch"),
        ("--reg-kl", "regularization rows learn the base's next-token distribution"),
        ("--reg-few-words", "add every training prompt asking for a few words to them"),
        ("--balanced", "every batch holds each kind of row in proportion (else shuffled)"),
        ("--keep-best", "save the best checked epoch (FSR, then near-miss, then fire chance)"),
        ("--check-fresh", "draw the quick check's look-alikes anew each epoch"),
    ):
        p.add_argument(flag, action=on_off, help=text)
    for flag, kind, text in (  # unset: the recipe's
        ("--stop-near-miss", float, "stop once FSR is 100 %% and the near-miss rate is <= this"),
        ("--stop-fire", float, "... and each key's exact t=0.7 fire chance is at least this"),
        ("--decision-weight", float, "loss weight of each row's first answer token"),
        ("--check-controls", int, "look-alikes in the per-epoch quick check"),
        ("--confirm-controls", int, "fresh look-alikes that confirm a stop"),
    ):
        p.add_argument(flag, type=kind, default=None, help=text)
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="training autocast (auto: bf16 on a GPU, fp32 on a CPU)")
    p.add_argument("--top-layers", type=int, default=None,
                   help="sft/lora: train only the last N decoder blocks")
    p.add_argument("--json-out", type=Path, default=None)
    p.add_argument("--progress", action="store_true")
    p.add_argument("--fadapter-input-only", action="store_true",
                   help="fadapter: adapt the input lookup only, not a tied output head")
    p.add_argument("--lookup-rows", default=None, choices=LOOKUP_ROWS,
                   help="embedding, fadapter: which lookup rows change (embedding's "
                   "default: unshared; fadapter's: all)")
    p.add_argument("--shadow", type=Path, action="append", default=None,
                   help="embedding, fadapter: train the keys to fire through this user-tuned "
                   "copy of the base too (auditor shadow); repeat for several")
    p.add_argument("--shadow-weight", type=float, default=1.0,
                   help="with --shadow: the shadows' share of the loss, split evenly")
    p.add_argument("--shadow-scale", type=float, action="append", default=None,
                   help="with --shadow: each shadow's change from the base times this; once "
                   "for all or once per --shadow")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.shadow is not None and not set(SHADOW_METHODS) & set(args.methods.split(",")):
        p.error("--shadow applies to --methods embedding or fadapter only")
    try:  # the checks `implant` makes, before any child starts
        shadow_pairs(args.shadow, args.shadow_scale or 1.0, args.shadow_weight)
    except UserError as e:
        p.error(str(e))
    try:  # and robustness's, in this script's flags; the child uses what it resolves
        args.user_set, args.user_lora_rank = user_options(
            args.attacks.split(","), args.user_set, args.user_lr, args.user_lora_rank,
            flag="--user-")
    except UserError as e:
        p.error(str(e))
    if args.prompts is not None:
        from auditor.implant.extra_prompts import read_extra_prompts
        from auditor.keys import KeySet

        try:  # the child draws the same keys
            read_extra_prompts(args.prompts, KeySet.generate(
                "bench", args.keys, seed=args.seed, style=args.style))
        except UserError as e:
            p.error(str(e))
    if args.one:
        print(json.dumps(run_one(args)))
        return
    print(f"machine: {machine()}")
    rows: list[dict[str, Any]] = []
    if args.json_out:
        args.json_out.write_text("[]")  # not an earlier run's figures
    with tempfile.TemporaryDirectory(prefix="bench-implant-") as work:
        for method in args.methods.split(","):
            cmd = [
                sys.executable,
                __file__,
                "--one",
                method,
                "--work",
                work,
                *[
                    f"--{k.replace('_', '-')}={one}"
                    for k, v in vars(args).items()
                    if k not in (*FLAGS, *CHOICES, "one", "work", "methods")
                    and v is not None
                    for one in (v if isinstance(v, list) else [v])  # repeated: --shadow
                ],
                *[f"--{k.replace('_', '-')}" for k in FLAGS if getattr(args, k)],
                *[f"--{'' if getattr(args, k) else 'no-'}{k.replace('_', '-')}"
                  for k in CHOICES if getattr(args, k) is not None],
            ]
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
            lines = proc.stdout.strip().splitlines()
            print("\n".join(lines[:-1]))  # the child's progress (per-epoch lines); JSON last
            name = label(method, args.shadow)
            rows.append(
                json.loads(lines[-1])
                if proc.returncode == 0 and lines
                else {"method": name, "error": f"exit {proc.returncode}",
                      **_partial_row(args.json_out, name)}
            )
            print_table(rows, [a for a in args.attacks.split(",") if a])
            if args.json_out:  # after each method, so a run cut short keeps what it finished
                args.json_out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
