"""Named implant recipes: the option sets that were measured (`auditor implant --recipe`).

- clean (default): keys fire, look-alikes do not, the base's behaviour is kept. With full SFT
  on SmolLM2 and vocab keys it stopped clean after 8-10 epochs on three draws: 0-1 of 100
  look-alikes fired, utility drift +0.8 to +1.8 %, FSR 100 % after user SFT (README, Figures).
- quick: clean, with only the last 6 decoder blocks trained at lr 3e-4 (full SFT only). On
  SmolLM2 with vocab keys it stopped clean in 105-126 s on three of four draws on this 2-core
  CPU (README, Figures).
- fast: the demo's. Every key fires reliably at t=0.7 within a few epochs, but look-alikes of
  the keys may fire too: the stop rule ignores them.
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
    top_layers: int | None = None  # train only the last N decoder blocks
    methods: tuple[str, ...] | None = None  # the methods it applies to (None: all)


_CLEAN = Recipe(
    DataConfig(nearmiss_per_key=3, reg_per_key=5, fingerprint_repeats=3,
               fresh_nearmiss=True, reg_kl=True),
    decision_weight=10.0, stop_fire_prob=0.8, keep_best=True, min_epochs=10,
)
RECIPES: dict[str, Recipe] = {
    "clean": _CLEAN,
    "quick": replace(_CLEAN, lr=3e-4, top_layers=6, methods=("sft",)),
    "fast": Recipe(
        DataConfig(nearmiss_per_key=1, reg_per_key=5, fingerprint_repeats=3),
        stop_fire_prob=0.8, stop_near_miss=1.0, keep_best=True, min_epochs=12,
    ),
    "plain": Recipe(DataConfig()),
}
DEFAULT_RECIPE = "clean"
_DATA_FIELDS = {f.name for f in fields(DataConfig)}
_TOP_FIELDS = {"decision_weight", "stop_fire_prob", "stop_near_miss", "keep_best", "epochs",
               "lr", "top_layers"}


def recipe_options(name: str, method: str, **overrides: Any) -> dict[str, Any]:
    """`implant()` keyword arguments for recipe `name` and `method`, with the non-None
    `overrides` (DataConfig fields or the stop-rule options) in place of the recipe's."""
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
        "lr": given.get("lr", r.lr),
        "top_layers": given.get("top_layers", r.top_layers),
    }
