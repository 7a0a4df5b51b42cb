"""Shadow layers: a lookup-only fingerprint that still fires after a user fine-tunes.

An embedding-only fingerprint lives in the input lookup. Full fine-tuning by a user barely
moves the keys' rows of it but moves every layer under them, and the keys stop firing. A
shadow is the base model fine-tuned the way a user might (`auditor shadow`: the bundled
instruction set, other rows than the robustness attack's; full fine-tuning, or with
`--tuning user-lora` a LoRA merged into it, the robustness check's other user). While
implanting, each batch's key and look-alike rows also go through the shadow's layers, fed
the lookup being trained plus the shadow's own drift of it; the two losses add, and the stop
rule asks both models to meet it. The shadow is only read: the published model is the base
with a trained lookup, as before. Several shadows (tuned on other rows) each add their term,
splitting the shadows' weight, and the stop rule asks every one of them. `--shadow-scale`
carries each shadow's tuning further when it is loaded (base + scale x its change): a
harsher user than the one that made it (one scale for every shadow, or one each: the same
shadow may come twice at two scales).

The F-Adapter trains its lookup the same way (the base's plus the private adapter), and the
owner later applies the adapter to a suspect's weights: through a shadow the keys learn to
fire with the adapter on a user-tuned copy too (on its tied head as well, when the adapter
covers the head), which is what `fadapter.load_into` builds from a tuned model.

torch is imported inside functions only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from auditor.errors import UserError
from auditor.implant.live_rows import LiveRows, take_rows
from auditor.implant.prefix import Prefixes
from auditor.keys import KeySet

SHADOW_RECORD = "shadow.json"  # written by make_shadow: how the shadow was tuned (public)
SHADOW_SEED = 1  # the robustness attack's user rows are drawn with seed 0
TUNINGS = ("user-sft", "user-lora")  # how `auditor shadow` tunes: robustness.py's attacks
MAX_SCALE = 3.0  # --shadow-scale: past this the tuned copy is hardly a user's model


@dataclass
class Shadow:
    model: Any  # the shadow, its input lookup replaced by the trained one plus its own drift
    weight: float
    record: dict[str, Any]
    prefixes: Prefixes | None = None  # kept prefixes of its rows, once picked (prefix.py)
    name: str = "the shadow"  # in the epoch line: its dir's name, and its scale when not 1

    def wrap(self, loss_fn: Any, decision_weight: float, live: LiveRows | None = None,
             constant: Sequence[int] | None = None) -> Any:
        """`loss_fn` plus `weight` x the same loss through the shadow on the batch's rows
        without soft targets: with --reg-kl (the clean recipe) the keys and look-alikes, as
        regularization pulls toward the base's own distribution, not the shadow's. With
        `live`, those of them that hold no trained token are skipped (live_rows.py); with
        `constant` (the trained token ids), what comes before a row's first one runs once
        (prefix.py)."""
        from auditor.implant.loss import answer_loss
        from auditor.implant.prefix import pick_prefix

        plain: Any = partial(answer_loss, decision_weight=decision_weight)
        picked: list[Any] = []

        def through(model: Any, batch: dict[str, Any]) -> Any:
            if not picked:  # checked on the shadow's first rows, as for the published model
                if constant:
                    self.prefixes = pick_prefix(model, batch, constant, decision_weight, plain)
                picked.append(plain if self.prefixes is None else self.prefixes.loss)
            return picked[0](model, batch)

        run: Any = live.wrap(through) if live is not None else through

        def both(model: Any, batch: dict[str, Any]) -> Any:
            loss = loss_fn(model, batch)
            sub = _hard_rows(batch)
            more = None if sub is None else run(self.model, sub)
            return loss if more is None else loss + self.weight * more

        return both

    def check(self, tokenizer: Any, keyset: KeySet, n_controls: int, seed: int,
              bf16: bool) -> tuple[float, float, float]:
        """(greedy FSR, near-miss rate, weakest key's t=0.7 fire chance) through the shadow."""
        from auditor.implant.stop import quick_check

        return quick_check(self.model, tokenizer, keyset, n_controls, seed=seed, bf16=bf16)


def _hard_rows(batch: dict[str, Any]) -> dict[str, Any] | None:
    """The batch's rows without soft targets, trimmed to their width; None if there are none."""
    import torch

    n = batch["input_ids"].shape[0]
    keep = (~batch["soft_on"].any(dim=1) if "soft_on" in batch
            else torch.ones(n, dtype=torch.bool, device=batch["input_ids"].device))
    if not bool(keep.any()):
        return None
    return take_rows({k: batch[k] for k in ("input_ids", "attention_mask", "labels")}, keep)


def validate(shadow_dir: Path) -> None:
    """Fail before any loading on a shadow dir that is no checkpoint (train.shadow_pairs
    checks the weight and scales)."""
    from auditor.implant.generate import is_model_dir

    if not is_model_dir(shadow_dir):
        raise UserError(f"--shadow is not a transformers checkpoint dir: {shadow_dir}")


def match_base(shadow_dir: Path, base_dir: Path) -> None:
    """Fail before any training when the shadow's config says another shape than the base's."""
    def shape(d: Path) -> tuple[Any, Any]:
        try:
            cfg = json.loads((d / "config.json").read_text())
        except (OSError, ValueError):
            return None, None
        return cfg.get("vocab_size"), cfg.get("hidden_size")

    mine, theirs = shape(shadow_dir), shape(base_dir)
    if None not in mine + theirs and mine != theirs:
        raise UserError(f"the shadow's (vocab, hidden) sizes are {mine}, the base's {theirs}: "
                        "make the shadow from the same base")


def attach(model: Any, base_lookup: Any, shadow_dir: Path, weight: float,
           scale: float = 1.0) -> Shadow:
    """Load the shadow and feed it `model`'s input lookup plus the shadow's drift from
    `base_lookup` (the base's lookup weight, taken before training); `implant` has run
    `validate` on the dir, weight and scale. With an F-Adapter that lookup is the base's plus
    the adapter, so the shadow's is its own plus the adapter, and a tied head gets the adapter
    on the shadow's own head: the model `fadapter.load_into` makes of a user-tuned copy.
    `scale` multiplies each of the shadow's changes from the base first (scale_drift)."""
    import torch

    from auditor.implant.fadapter import is_tied, make_adapter_head
    from auditor.implant.generate import load_model
    from auditor.implant.train import untie_output_head

    shadow, _ = load_model(shadow_dir, device=str(base_lookup.device), dtype=torch.float32)
    own = shadow.get_input_embeddings().weight.detach()
    if own.shape != base_lookup.shape:
        raise UserError(f"the shadow's input lookup is {tuple(own.shape)}, the base's "
                        f"{tuple(base_lookup.shape)}: make the shadow from the same base")
    if scale != 1.0:
        scale_drift(shadow, model, base_lookup, scale)  # in place: `own` is scaled too
    drift = (own - base_lookup.detach().to(own.dtype)).clone()
    untie_output_head(shadow)  # its head stays its own when its lookup is replaced ...
    for p in shadow.parameters():
        p.requires_grad_(False)
    lookup = model.get_input_embeddings()
    shadow.set_input_embeddings(shifted_lookup(lookup, drift))
    if getattr(lookup, "on_head", False):  # an F-Adapter on a tied head: on the shadow's too,
        shadow.set_output_embeddings(  # as fadapter.load_into puts it on a tuned model
            make_adapter_head(shadow.get_output_embeddings(), lookup))
    elif is_tied(model) and not hasattr(lookup, "u"):  # ... unless the trained lookup is the
        shadow.set_output_embeddings(shifted_lookup(lookup, drift, head=True))  # head too
    record = read_record(shadow_dir)
    name = shadow_dir.name if scale == 1.0 else f"{shadow_dir.name} {scale:g}x"
    return Shadow(shadow, weight, record if scale == 1.0 else {**record, "scale": scale},
                  name=name)


def scale_drift(shadow: Any, model: Any, base_lookup: Any, scale: float) -> None:
    """Move each of the shadow's weights to base + `scale` x (its own - base), in place,
    before its head is untied: the base's weight is `model`'s of the same name (its frozen
    layers are the base's), `base_lookup` for the input lookup and a head tied to it."""
    import torch

    lookup = shadow.get_input_embeddings().weight
    head = shadow.get_output_embeddings()
    with torch.no_grad():
        for name, p in shadow.named_parameters():  # a tied head is listed once, as the lookup
            if p is lookup:
                base = base_lookup
            elif head is not None and p is head.weight:
                base = model.get_output_embeddings().weight
            else:
                try:
                    base = model.get_parameter(name)
                except AttributeError:
                    raise UserError(f"the shadow has a weight the base lacks ({name}): make "
                                    "the shadow from the same base") from None
            if base.shape != p.shape:
                raise UserError(f"the shadow's {name} is {tuple(p.shape)}, the base's "
                                f"{tuple(base.shape)}: make the shadow from the same base")
            p.mul_(scale).add_(base.detach().to(p.dtype), alpha=1.0 - scale)


def read_record(shadow_dir: Path) -> dict[str, Any]:
    """The shadow's public record (how it was tuned), or a note that there is none."""
    path = shadow_dir / SHADOW_RECORD
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"tuning": "unknown (no shadow.json)"}
    return data if isinstance(data, dict) else {"tuning": "unknown (shadow.json is not an object)"}


def shifted_lookup(lookup: Any, drift: Any, *, head: bool = False) -> Any:
    """A module computing `lookup(ids) + drift[ids]`, or with `head` the logits
    `hidden @ (lookup.weight + drift).T` (gradients reach `lookup` only)."""
    import torch
    import torch.nn.functional as F

    class Shifted(torch.nn.Module):
        """The trained lookup, moved as the shadow's own moved."""

        def __init__(self) -> None:
            super().__init__()
            self.lookup = lookup
            self.register_buffer("drift", drift, persistent=False)

        @property
        def weight(self) -> Any:  # code that reads embed_tokens.weight sees the sum
            return self.lookup.weight + self.get_buffer("drift")

        def forward(self, x: Any) -> Any:
            if head:
                return F.linear(x, self.weight)
            return self.lookup(x) + F.embedding(x, self.get_buffer("drift"))

    return Shifted()


def make_shadow(base: str, out: Path, *, rows: int = 1000, epochs: int = 3,
                subset: str = "mixed", seed: int = SHADOW_SEED, lr: float | None = None,
                progress: bool = False, tuning: str = "user-sft",
                lora_rank: int | None = None) -> Path:
    """Fine-tune `base` as a user might (`tuning`: full SFT, or LoRA merged, of `lora_rank`,
    on the bundled set; the robustness attacks of the same names) into `out`, with a public
    shadow.json saying how."""
    from auditor.implant.launch import refuse_lone_processes
    from auditor.implant.robustness import USER_LR, user_finetune, user_options
    from auditor.implant.train import base_spec, on_main, refuse_out
    from providers.local_models import resolve_base

    if rows < 1 or epochs < 1:
        raise UserError("--rows and --epochs must be >= 1")
    if tuning not in TUNINGS:
        raise UserError(f"unknown shadow tuning {tuning!r} (known: {', '.join(TUNINGS)})")
    subset, rank = user_options([tuning], subset, lr, lora_rank)
    refuse_out(out, SHADOW_RECORD)
    refuse_lone_processes()
    base_dir = resolve_base(base)
    lr = lr or USER_LR[tuning]
    user_finetune(base_dir, out, tuning, epochs=epochs, rows=rows, lr=lr, seed=seed,
                  subset=subset, progress=progress, lora_rank=rank)
    record: dict[str, Any] = {"tuning": tuning, "base": base_spec(base), "rows": rows,
                              "epochs": epochs, "set": subset, "seed": seed, "lr": lr}
    if tuning == "user-lora":
        record["lora_rank"] = rank
    on_main(lambda: (out / SHADOW_RECORD).write_text(json.dumps(record, indent=1) + "\n"))
    return out
