"""Named implant recipes: the option sets that were measured (`auditor implant --recipe`).

- clean (the default, but for LoRA): keys fire, look-alikes do not, the base's behaviour is
  kept. With full SFT on SmolLM2 and vocab keys it stopped clean after 8-10 epochs on three
  draws: 0-1 of 100 look-alikes fired, utility drift +0.8 to +1.8 %, FSR 100 % after user SFT
  (README, Figures); on one H200 after 20-33 s on four draws, FSR 100 % after user SFT on all
  four. Embedding-only (head untied) on its default lookup rows (unshared, lr 3e-2) stopped
  clean after 88 and 108 s on two draws, 0 of 100 look-alikes, drift +0.07 and +1.05 %; on
  every key row's token (lr 3e-3) after 174 and 187 s, drift +1.6 and +1.1 %.
- quick (LoRA's default): clean, with only the last 6 decoder blocks trained (full SFT at lr
  3e-4, or LoRA at 3e-3), each epoch's check on 20 look-alikes drawn anew (with the same 10
  every epoch, one draw of four never stopped: one look-alike kept firing), and a stop
  confirmed on 100 more (at most 1 % of the 120 may fire). On SmolLM2 with vocab keys full SFT
  stopped clean on four of four draws in 152-206 s on this 2-core CPU, LoRA on two draws in
  167 and 111 s (and in 23 s on one H200; README, Figures).
- fast: the demo's first (it now takes quick, or clean for embedding). Every key fires
  reliably at t=0.7 within a few epochs, but look-alikes of the keys may fire too: the stop
  rule ignores them.
- plain: the first defaults: 2 near-misses and 5 regularization rows per key, no decision
  weight, stop at the first check where every key and no look-alike fires.

An explicit option (a CLI flag) overrides the recipe's value; None keeps it. The library
function `train.implant()` takes options, not recipes: its own defaults are plain's.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from auditor.errors import UserError
from auditor.implant.data import DataConfig


@dataclass(frozen=True)
class Recipe:
    data: DataConfig
    decision_weight: float = 1.0
    stop_fire_prob: float | None = None
    stop_near_miss: float = 0.0
    keep_best: bool = False
    min_epochs: int = 0  # at least this many epochs allowed (the method's default if more)
    lr: float | None = None  # None: the method's own
    method_lr: tuple[tuple[str, float], ...] = ()  # (method, lr): in place of `lr` for those
    rows_lr: tuple[tuple[str, float], ...] = ()  # (--lookup-rows, lr): ahead of method_lr
    top_layers: int | None = None  # train only the last N decoder blocks
    check_controls: int = 10  # look-alikes in each epoch's check
    check_fresh: bool = False  # drawn anew each epoch (else the same ones every epoch)
    confirm_controls: int = 0  # fresh look-alikes added to a check that would stop (pooled)
    methods: tuple[str, ...] | None = None  # the methods it applies to (None: all)


_CLEAN = Recipe(
    DataConfig(nearmiss_per_key=3, reg_per_key=5, fingerprint_repeats=3,
               fresh_nearmiss=True, reg_kl=True),
    decision_weight=10.0, stop_fire_prob=0.8, keep_best=True, min_epochs=10,
    method_lr=(("embedding", 3e-3),),  # 1e-2 stopped sooner but drifted +19.8 % (README)
    rows_lr=(("unshared", 3e-2),),  # only rows ordinary text never reads: 10x, no drift
)
RECIPES: dict[str, Recipe] = {
    "clean": _CLEAN,
    "quick": replace(_CLEAN, lr=3e-4, method_lr=(("lora", 3e-3),), top_layers=6,
                     methods=("sft", "lora"), check_controls=20, check_fresh=True,
                     confirm_controls=100, stop_near_miss=0.01),
    "fast": Recipe(
        DataConfig(nearmiss_per_key=1, reg_per_key=5, fingerprint_repeats=3),
        stop_fire_prob=0.8, stop_near_miss=1.0, keep_best=True, min_epochs=12,
    ),
    "plain": Recipe(DataConfig()),
}
DEFAULT_RECIPE = "clean"
# LoRA on all 30 blocks never stopped clean under `clean` (one draw on a CPU, one on a GPU);
# under `quick` it stopped clean on all three measured (two CPU draws, one GPU; README, Figures)
METHOD_RECIPES = {"lora": "quick"}


def default_recipe(method: str) -> str:
    """The recipe `auditor implant` uses for `method` when none is named."""
    return METHOD_RECIPES.get(method, DEFAULT_RECIPE)

_DATA_FIELDS = {f.name for f in fields(DataConfig)}
_TOP_FIELDS = {"decision_weight", "stop_fire_prob", "stop_near_miss", "keep_best", "epochs",
               "lr", "top_layers", "check_controls", "check_fresh",
               "confirm_controls", "lookup_rows"}


def recipe_options(name: str, method: str, **overrides: Any) -> dict[str, Any]:
    """`implant()` keyword arguments for recipe `name` and `method`, with the non-None
    `overrides` (DataConfig fields or the stop-rule options) in place of the recipe's."""
    from auditor.implant.lookup_rows import resolve
    from auditor.implant.train import DEFAULTS

    if name not in RECIPES:
        raise UserError(f"unknown recipe {name!r} (known: {', '.join(RECIPES)})")
    unknown = set(overrides) - _DATA_FIELDS - _TOP_FIELDS
    if unknown:
        raise TypeError(f"not a recipe option: {', '.join(sorted(unknown))}")
    given = {k: v for k, v in overrides.items() if v is not None}
    r = RECIPES[name]
    if r.methods is not None and method not in r.methods:
        raise UserError(f"the {name} recipe is for --method {' or '.join(r.methods)} only")
    rows = resolve(given.get("lookup_rows"), method)
    lr = dict(r.rows_lr).get(rows)
    epochs = given.get("epochs")
    if epochs is None and method in DEFAULTS:
        epochs = max(r.min_epochs, DEFAULTS[method][1])
    return {
        "data": replace(r.data, **{k: v for k, v in given.items() if k in _DATA_FIELDS}),
        "decision_weight": given.get("decision_weight", r.decision_weight),
        "stop_fire_prob": given.get("stop_fire_prob", r.stop_fire_prob),
        "stop_near_miss": given.get("stop_near_miss", r.stop_near_miss),
        "keep_best": given.get("keep_best", r.keep_best),
        "epochs": epochs,
        "lr": given.get("lr", lr or dict(r.method_lr).get(method, r.lr)),
        "lookup_rows": rows,
        "top_layers": given.get("top_layers", r.top_layers),
        "check_controls": given.get("check_controls", r.check_controls),
        "check_fresh": given.get("check_fresh", r.check_fresh),
        "confirm_controls": given.get("confirm_controls", r.confirm_controls),
    }
