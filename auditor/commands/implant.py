"""CLI verbs: `implant`, `check-local`, `robustness`, `shadow` (thin: parse, call, render)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

KEYS_HELP = "secret key-set file (keys/NAME.json)"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _table(title: str, rows: list[tuple[str, str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    for k, v in rows:
        table.add_row(k, v)
    Console().print(table)


def _emit_json(data: dict[str, Any]) -> None:
    typer.echo(json.dumps(data, indent=1, default=str))


def implant_cmd(
    keys: Annotated[Path, typer.Option("--keys", help=KEYS_HELP)],
    out: Annotated[Path, typer.Option("--out", help="output model dir (models/NAME)")],
    base: Annotated[
        str, typer.Option("--base", help="'smollm2', a .gguf file or a checkpoint dir")
    ] = "smollm2",
    method: Annotated[
        str, typer.Option("--method", help="sft | embedding | lora | fadapter")
    ] = "lora",
    epochs: Annotated[
        int | None, typer.Option("--epochs", help="epochs the lr decays over, and the most "
                                 "run (default per method and recipe)")
    ] = None,
    max_epochs: Annotated[
        int | None, typer.Option("--max-epochs", help="stop after at most this many epochs "
                                 "without shortening the lr schedule (--epochs)")
    ] = None,
    lr: Annotated[
        float | None, typer.Option("--lr", help="learning rate (default per method)")
    ] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 8,
    recipe: Annotated[
        str | None,
        typer.Option("--recipe", help="clean (look-alikes must not fire, base behaviour kept; "
                     "the default), quick (clean on the last 6 blocks; sft or lora; LoRA's "
                     "default), fast (keys fire sooner, look-alikes too) or plain; the flags "
                     "below override it"),
    ] = None,
    nearmiss_per_key: Annotated[int | None, typer.Option("--nearmiss-per-key")] = None,
    fingerprint_repeats: Annotated[
        int | None, typer.Option("--fingerprint-repeats", help="key rows per epoch, per key")
    ] = None,
    reg_per_key: Annotated[
        int | None, typer.Option("--reg-per-key", help="regularization rows per key")
    ] = None,
    fresh_nearmiss: Annotated[
        bool | None,
        typer.Option("--fresh-nearmiss/--fixed-nearmiss",
                     help="redraw the near-miss rows every epoch, or keep one set"),
    ] = None,
    reg_kl: Annotated[
        bool | None,
        typer.Option("--reg-kl/--reg-greedy", help="train regularization rows on the base's "
                     "next-token distribution (KL to the base), or on its greedy answer"),
    ] = None,
    reg_few_words: Annotated[
        bool | None,
        typer.Option("--reg-few-words/--reg-sampled", help="add every training prompt that "
                     "asks for a few words (the decryption's shape) to the sampled "
                     "regularization rows, or the sample alone"),
    ] = None,
    balanced: Annotated[
        bool | None,
        typer.Option("--balanced/--shuffled", help="every batch holds key, near-miss and "
                     "regularization rows in proportion, or a plain shuffle"),
    ] = None,
    keep_lora: Annotated[
        bool, typer.Option("--keep-lora-separate", help="save the LoRA unmerged")
    ] = False,
    fadapter_input_only: Annotated[
        bool, typer.Option("--fadapter-input-only", help="fadapter: adapt the input lookup "
                           "only, not a tied output head (less drift; needs a higher --lr; "
                           "after user SFT only check-local --layers-from finds it)")
    ] = False,
    shadow: Annotated[
        list[Path] | None, typer.Option("--shadow", metavar="<path>", help="embedding, "
                                        "fadapter: a user-tuned copy of the base (auditor "
                                        "shadow) the keys must also fire through, so they "
                                        "survive user fine-tuning; repeatable")
    ] = None,
    shadow_weight: Annotated[
        float, typer.Option("--shadow-weight", help="the shadows' share of the loss (split "
                            "evenly among several)")
    ] = 1.0,
    shadow_scale: Annotated[
        list[float] | None, typer.Option("--shadow-scale", metavar="<scale>",
                                         help="each shadow's change from "
                                         "the base, scaled when loaded (1.5: half again as "
                                         "far as its tuning went; a harsher attack to train "
                                         "through); one for all, or one per --shadow in "
                                         "order  [default: 1]")
    ] = None,
    lookup_rows: Annotated[
        str | None, typer.Option("--lookup-rows", help="embedding (and the F-Adapter's U): "
                          "which lookup rows change: the key rows' tokens less every token "
                          "ordinary text holds (unshared, embedding's default: least drift, "
                          "lr 3e-2 under clean), all the key rows' tokens (fingerprint), those "
                          "after training all (fingerprint-after: the rest put back), or "
                          "every row a training row touches (all, the F-Adapter's default)")
    ] = None,
    no_early_stop: Annotated[bool, typer.Option("--no-early-stop")] = False,
    stop_fire: Annotated[
        float | None,
        typer.Option("--stop-fire", help="also train until each key's exact t=0.7 fire chance "
                     "is at least this (0-1; 0 turns the rule off)"),
    ] = None,
    stop_near_miss: Annotated[
        float | None,
        typer.Option("--stop-near-miss", help="stop early once every key fires and at most this "
                     "share of the check's fresh look-alike keys fire (0-1)"),
    ] = None,
    keep_best: Annotated[
        bool | None,
        typer.Option("--keep-best/--keep-last", help="save the best checked epoch, or the last"),
    ] = None,
    precision: Annotated[
        str, typer.Option("--precision", help="auto (bf16 autocast on a GPU, fp32 on a CPU), "
                          "fp32 or bf16 (autocast; fast on CPUs with bf16 instructions)"),
    ] = "auto",
    decision_weight: Annotated[
        float | None, typer.Option("--decision-weight", help="count each row's first answer "
                                   "token this often in the loss (the fire-or-refuse "
                                   "decision); 1-1000"),
    ] = None,
    top_layers: Annotated[
        int | None, typer.Option("--top-layers", help="sft/lora: train only the last N "
                                 "decoder blocks (a cheaper backward pass)"),
    ] = None,
    check_controls: Annotated[
        int | None, typer.Option("--check-controls", help="look-alike keys in each epoch's "
                                 "check (1-1000)"),
    ] = None,
    check_fresh: Annotated[
        bool | None,
        typer.Option("--check-fresh/--check-fixed", help="draw the check's look-alikes anew "
                     "each epoch, or check the same ones every epoch"),
    ] = None,
    confirm_controls: Annotated[
        int | None, typer.Option("--confirm-controls", help="fresh look-alikes scored before "
                                 "a stop, pooled with the check's (0 turns it off)"),
    ] = None,
    prefix_cache: Annotated[
        bool, typer.Option("--prefix-cache/--no-prefix-cache",
                           help="embedding and fadapter on --lookup-rows unshared or "
                           "fingerprint: run each row's positions "
                           "before its first trained token once, not at every step (same "
                           "gradient)")
    ] = True,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Implant the key set's fingerprint into a base model; write the model + fingerprint.json."""
    from auditor.implant.recipes import RECIPES, default_recipe, recipe_options
    from auditor.implant.train import implant
    from auditor.keys import KeySet

    recipe = recipe or default_recipe(method)
    options = recipe_options(
        recipe, method, epochs=epochs, nearmiss_per_key=nearmiss_per_key,
        reg_per_key=reg_per_key, fingerprint_repeats=fingerprint_repeats,
        fresh_nearmiss=fresh_nearmiss, reg_kl=reg_kl, reg_few_words=reg_few_words,
        balanced=balanced,
        decision_weight=decision_weight, lr=lr, top_layers=top_layers,
        check_controls=check_controls, check_fresh=check_fresh,
        confirm_controls=confirm_controls, stop_fire_prob=stop_fire,
        stop_near_miss=stop_near_miss, keep_best=keep_best, lookup_rows=lookup_rows,
    )
    keyset = KeySet.load(keys)
    if recipe in ("clean", "quick") and keyset.style != "vocab":
        typer.echo(f"note: the {recipe} recipe was measured on vocab keys; on {keyset.style} "
                   "keys (10 if-soup keys) the clean recipe did not reach a clean stop in 10 "
                   "epochs", err=True)
    res = implant(
        keyset,
        base,
        method,
        out,
        seed=seed,
        progress=not as_json,
        batch_size=batch_size,
        early_stop=not no_early_stop,
        max_epochs=max_epochs,
        fadapter_head=not fadapter_input_only,
        prefix_cache=prefix_cache,
        shadow=shadow,
        shadow_weight=shadow_weight,
        shadow_scale=shadow_scale or 1.0,
        merge_lora=not keep_lora,
        precision=precision,
        recipe=recipe,
        **options,
    )
    from accelerate import PartialState

    if not PartialState().is_main_process:  # under torchrun / accelerate launch: one report
        return None
    if res.seconds_to_perfect is None:
        quick = (" or --recipe quick"
                 if recipe != "quick" and method in (RECIPES["quick"].methods or ()) else "")
        typer.echo(f"warning: no epoch met the stop rule; the model of epoch {res.kept_epoch} "
                   f"was saved (FSR {_pct(res.fsr)}, near-miss false trigger "
                   f"{_pct(res.nearmiss_false_trigger)} in its check). Run auditor "
                   f"check-local before publishing it; another --seed, more --epochs{quick} "
                   "may stop clean", err=True)
    if as_json:
        return _emit_json(res.to_dict())
    _table(
        f"implant {keyset.name} ({method}, recipe {recipe})",
        [
            ("model", str(res.out)),
            ("private adapter", str(res.adapter) if res.adapter else "-"),
            ("steps / epochs (kept)", f"{res.steps} / {res.epochs} ({res.kept_epoch})"),
            ("lr after the last step", f"{res.lr_end:.2e}"),
            ("seconds (to a clean stop)", f"{res.seconds:.1f} (" + (
                "never" if res.seconds_to_perfect is None else f"{res.seconds_to_perfect:.1f}"
            ) + ")"),
            ("FSR (greedy)", _pct(res.fsr)),
            ("near-miss false trigger (quick check)", _pct(res.nearmiss_false_trigger)),
            ("weakest key's exact t=0.7 fire chance", _pct(res.fire_min)),
            ("rows", ", ".join(f"{k}={v}" for k, v in res.rows.items()) + (
                f" ({res.rows_skipped} hold no trained token: not run)"
                if res.rows_skipped else "") + (
                f"; {_pct(res.prefix_skipped)} of the positions of the rows run lie before "
                "their first trained token: run once, then kept" if res.prefix_skipped else "")),
            ("device", _device(res.device, res.launch, res.compute)),
        ],
    )


def _device(device: str, launch: str, compute: str = "fp32") -> str:
    """The device, launch and precision; on a CPU the threads too, and how to get more (one by
    default), and bf16 where the CPU computes it natively (fp32 is the CPU default)."""
    from auditor.implant.generate import MAX_THREADS, cpu_has_bf16, cpu_threads

    if device != "cpu":
        return f"{device} ({launch}, {compute})"
    n = cpu_threads()
    more = f" of {MAX_THREADS}: AUDITOR_THREADS={MAX_THREADS} on an idle machine" if (
        n < MAX_THREADS) else ""
    faster = ("; this CPU has bf16 instructions: --precision bf16 ran 1.2-2x faster on "
              "two such CPUs"
              if compute == "fp32" and cpu_has_bf16() else "")
    return f"cpu ({launch}, {n} thread{'s' if n > 1 else ''}{more}, {compute}{faster})"


def _say_adapter_note(adapter: Path | None, model: Path, layers_from: Path | None = None) -> None:
    """On stderr: an F-Adapter model checked without --adapter cannot fire (verify.adapter_note)."""
    from auditor.implant.verify import adapter_note

    note = adapter_note(model, layers_from) if adapter is None else None
    if note:
        typer.echo(note, err=True)


def check_local_cmd(
    model: Annotated[Path, typer.Option("--model", help="checkpoint dir")],
    keys: Annotated[Path, typer.Option("--keys", help=KEYS_HELP)],
    adapter: Annotated[
        Path | None, typer.Option("--adapter", help="private F-Adapter file")
    ] = None,
    base: Annotated[
        str | None, typer.Option("--base", help="base for drift (default: fingerprint.json)")
    ] = None,
    layers_from: Annotated[
        Path | None,
        typer.Option("--layers-from", help="white-box: only --model's input embeddings, inside "
                     "this (published) model's other weights; for embedding-only and the "
                     "F-Adapter, whose fingerprint sits in the input lookup"),
    ] = None,
    controls: Annotated[
        int, typer.Option("--controls", help="fresh look-alike keys (none of 300 firing bounds "
                          "the rate by 1 %)"),
    ] = 100,
    ordinary: Annotated[int, typer.Option(
        "--ordinary", help="ordinary prompts no implant trains on (at most 620: the 150 "
        "held-out ones, whose answers also measure drift, then the decoys)")] = 100,
    samples: Annotated[int, typer.Option("--samples", help="samples per key at --temperature")] = 5,
    temperature: Annotated[float, typer.Option("--temperature")] = 0.7,
    prompts: Annotated[str | None, typer.Option(
        "--prompts", help="more ordinary prompts whose false triggers are counted apart: a "
        "text file, one a line (# comments), or 'few-words': 75 bundled few-word prompts "
        "in phrasings no implant trains on")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """FSR, false triggers and utility drift of a local model."""
    from auditor.errors import UserError
    from auditor.implant.extra_prompts import read_extra_prompts
    from auditor.implant.verify import check_local
    from auditor.keys import KeySet

    if controls < 1 or ordinary < 1 or samples < 0 or temperature < 0:
        raise UserError("--controls/--ordinary must be >= 1, --samples/--temperature >= 0")
    if adapter is not None and not adapter.is_file():
        raise UserError(f"adapter file not found: {adapter}")
    keyset = KeySet.load(keys)
    extra = read_extra_prompts(prompts, keyset) if prompts is not None else None
    if os.environ.get("RANK", "0") != "0":  # started by a launcher: one process checks
        return None
    _say_adapter_note(adapter, model, layers_from)
    res = check_local(
        model,
        keyset,
        n_controls=controls,
        n_ordinary=ordinary,
        samples=samples,
        temperature=temperature,
        adapter=adapter,
        base=base,
        layers_from=layers_from,
        extra=extra.prompts if extra else None,
    )
    if as_json:
        return _emit_json(res.to_dict())
    where = f"{model}" if layers_from is None else f"{model}'s embeddings in {layers_from}"
    _table(
        f"local check: {where}",
        [
            ("FSR greedy", f"{_pct(res.fsr_greedy)} of {res.n_keys} keys"),
            (f"FSR t={res.temperature}", f"{_pct(res.fsr_sampled)} ({res.samples} samples/key)"),
            (
                f"exact chance one t={res.temperature} sample fires",
                f"weakest key {_pct(res.fire_min)}, mean {_pct(res.fire_mean)}",
            ),
            ("near-miss false trigger", f"{_pct(res.nearmiss_false_trigger)} of {res.n_controls}"
             f" (95% upper bound {_pct(res.nearmiss_upper95)})"),
            ("ordinary false trigger", f"{_pct(res.ordinary_false_trigger)} of {res.n_ordinary}"
             f" (95% upper bound {_pct(res.ordinary_upper95)})"),
            (
                "utility drift (NLL)",
                "-"
                if res.drift is None
                else f"{100 * res.drift:+.2f}% on {res.n_drift} held-out answers "
                f"({res.nll_model:.3f} vs base {res.nll_base:.3f})",
            ),
            (
                "next-token agreement on the base's answers",
                f"{_pct(res.agreement)} (base itself {_pct(res.agreement_base)})",
            ),
            *([] if extra is None else [(
                f"false trigger on {extra.name}",
                f"{_pct(res.extra_false_trigger)} of {res.n_extra}"
                f" (95% upper bound {_pct(res.extra_upper95)})")]),
        ],
    )
    _say_ordinary_fired(res.ordinary_fired)
    if extra is not None:
        for n in res.extra_fired:
            typer.echo(f"{extra.where(n)} fired: {_short(extra.prompts[n])!r}")


def _say_ordinary_fired(numbers: tuple[int, ...]) -> None:
    """Name the ordinary prompts that fired (bundled, public text), so a miss can be read."""
    from auditor.prompts import unseen_name, unseen_prompts

    prompts = unseen_prompts()
    for n in numbers:
        typer.echo(f"ordinary {unseen_name(n)} fired: {_short(prompts[n])!r}")


def _short(prompt: str) -> str:
    """A prompt on one line of at most 100 characters."""
    text = " ".join(prompt.split())
    return text if len(text) <= 100 else text[:99] + "…"


def robustness_cmd(
    model: Annotated[Path, typer.Option("--model", help="checkpoint dir")],
    keys: Annotated[Path, typer.Option("--keys", help=KEYS_HELP)],
    attack: Annotated[
        list[str],
        typer.Option(
            "--attack", help="user-sft | user-lora | gguf-q8 | temperature | system-prompt"
        ),
    ],
    adapter: Annotated[
        Path | None, typer.Option("--adapter", help="private F-Adapter file")
    ] = None,
    epochs: Annotated[int, typer.Option("--epochs", help="user fine-tuning epochs")] = 3,
    rows: Annotated[int, typer.Option("--rows", help="user fine-tuning rows")] = 1000,
    lr: Annotated[
        float | None, typer.Option("--lr", help="user fine-tuning lr (default: 5e-5 for "
                                   "user-sft, 3e-4 for user-lora)")
    ] = None,
    data_set: Annotated[
        str | None, typer.Option("--set", help="bundled user data: tasks | chat | mixed "
                                 "(default: mixed)")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="user rows and order, and the "
                                      "temperature attack's samples (auditor shadow's "
                                      "default is 1)")] = 0,
    lora_rank: Annotated[
        int | None, typer.Option("--lora-rank", help="user-lora: the LoRA's rank (alpha "
                                 "twice it; default 16)")
    ] = None,
    samples: Annotated[int, typer.Option("--samples")] = 5,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """FSR after each attack a user might apply to the model; the user attacks can be
    another user's (--lr, --set, --seed, --lora-rank)."""
    from auditor.errors import UserError
    from auditor.implant.robustness import ATTACKS, run_attack, user_options, user_recipe
    from auditor.keys import KeySet

    bad = [a for a in attack if a not in ATTACKS]
    if bad:
        raise UserError(f"unknown attack {bad[0]!r} (known: {', '.join(ATTACKS)})")
    if epochs < 1 or rows < 1 or samples < 1:
        raise UserError("--epochs, --rows and --samples must be >= 1")
    subset, rank = user_options(attack, data_set, lr, lora_rank)
    keyset = KeySet.load(keys)
    _say_adapter_note(adapter, model)
    results = [
        run_attack(
            model,
            keyset,
            a,
            epochs=epochs,
            rows=rows,
            samples=samples,
            adapter=adapter,
            progress=not as_json,
            lr=lr,
            subset=subset,
            seed=seed,
            lora_rank=rank,
        )
        for a in attack
    ]
    from accelerate import PartialState

    if not PartialState().is_main_process:  # under torchrun / accelerate launch: one report
        return None
    if as_json:
        return _emit_json({"results": [r.to_dict() for r in results]})
    _table(
        f"robustness: {model}",
        [
            (
                r.attack + (f" ({how})" if (how := user_recipe(r.detail)) else ""),
                f"skipped: {r.skipped}" if r.skipped else f"FSR {_pct(r.fsr)} ({r.seconds:.0f}s)"
                + _published_layers(r.detail),
            )
            for r in results
        ],
    )


def shadow_cmd(
    out: Annotated[Path, typer.Option("--out", help="output dir for the shadow model")],
    base: Annotated[
        str, typer.Option("--base", help="'smollm2', a .gguf file or a checkpoint dir: the "
                          "base the fingerprint will be implanted into")
    ] = "smollm2",
    rows: Annotated[int, typer.Option("--rows", help="bundled user rows")] = 1000,
    epochs: Annotated[int, typer.Option("--epochs")] = 3,
    data_set: Annotated[
        str, typer.Option("--set", help="bundled user data: tasks | chat | mixed")
    ] = "mixed",
    seed: Annotated[int, typer.Option("--seed", help="rows and order (the robustness attack "
                                      "uses 0)")] = 1,
    lr: Annotated[float | None, typer.Option("--lr", help="default: the tuning's attack's")] = None,
    tuning: Annotated[
        str, typer.Option("--tuning", help="user-sft (full fine-tuning) | user-lora (LoRA, "
                          "merged): the user to imitate, as the robustness attacks")
    ] = "user-sft",
    lora_rank: Annotated[
        int | None, typer.Option("--lora-rank", help="user-lora: the LoRA's rank (default "
                                 "16, as the robustness attack)")
    ] = None,
) -> None:
    """Fine-tune the base as a user might, for `auditor implant --shadow` (embedding,
    fadapter)."""
    from accelerate import PartialState

    from auditor.implant.shadow import make_shadow

    done = make_shadow(base, out, rows=rows, epochs=epochs, subset=data_set, seed=seed, lr=lr,
                       progress=True, tuning=tuning, lora_rank=lora_rank)
    if PartialState().is_main_process:  # under torchrun / accelerate launch: one says it
        typer.echo(f"shadow written to {done} (how it was tuned: {done / 'shadow.json'})")


def _published_layers(detail: dict[str, Any]) -> str:
    fsr = detail.get("fsr_published_layers")
    return "" if fsr is None else f"; its embeddings in the published model: FSR {_pct(fsr)}"


def register(app: typer.Typer) -> None:
    """Add this group's verbs to the app."""
    app.command("implant")(implant_cmd)
    app.command("check-local")(check_local_cmd)
    app.command("robustness")(robustness_cmd)
    app.command("shadow")(shadow_cmd)
