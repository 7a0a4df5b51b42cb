"""Named implant recipes (what each sets, how flags override it, bad names) and the
balanced row order."""

from __future__ import annotations

import pytest

from auditor.errors import UserError
from auditor.implant.data import DataConfig
from auditor.implant.recipes import DEFAULT_RECIPE, RECIPES, default_recipe, recipe_options
from auditor.implant.train import DEFAULTS, METHODS


def test_lora_defaults_to_quick_every_other_method_to_clean() -> None:
    assert default_recipe("lora") == "quick"
    assert [default_recipe(m) for m in METHODS if m != "lora"] == ["clean"] * (len(METHODS) - 1)
    assert RECIPES["quick"].methods is not None and "lora" in RECIPES["quick"].methods


def test_the_default_is_the_clean_recipe_with_every_measured_part() -> None:
    opts = recipe_options(DEFAULT_RECIPE, "sft")
    assert DEFAULT_RECIPE == "clean"
    d = opts["data"]
    assert (d.nearmiss_per_key, d.reg_per_key, d.fingerprint_repeats) == (3, 5, 3)
    assert d.fresh_nearmiss and d.reg_kl
    assert opts["decision_weight"] == 10.0 and opts["stop_fire_prob"] == 0.8
    assert opts["stop_near_miss"] == 0.0 and opts["keep_best"] is True
    assert opts["epochs"] == 10


def test_epochs_are_at_least_the_recipes_and_the_methods_own() -> None:
    for method in METHODS:
        assert recipe_options("clean", method)["epochs"] == max(10, DEFAULTS[method][1])
        assert recipe_options("plain", method)["epochs"] == DEFAULTS[method][1]
    assert recipe_options("clean", "fadapter", epochs=3)["epochs"] == 3


def test_given_options_override_and_none_keeps_the_recipes() -> None:
    opts = recipe_options("clean", "lora", nearmiss_per_key=1, reg_kl=False, keep_best=False,
                          stop_fire_prob=0.0, decision_weight=None, fresh_nearmiss=None)
    assert opts["data"].nearmiss_per_key == 1 and opts["data"].reg_kl is False
    assert opts["data"].fresh_nearmiss is True  # None kept the recipe's
    assert opts["keep_best"] is False and opts["stop_fire_prob"] == 0.0
    assert opts["decision_weight"] == 10.0
    assert RECIPES["clean"].data.nearmiss_per_key == 3  # the table itself is untouched
    assert not any(r.data.reg_few_words for r in RECIPES.values())  # measured, not a default
    assert recipe_options("clean", "fadapter", reg_few_words=True)["data"].reg_few_words


def test_clean_takes_its_measured_lr_for_embedding_only() -> None:
    assert recipe_options("clean", "embedding", lookup_rows="fingerprint")["lr"] == 3e-3
    assert recipe_options("clean", "embedding", lr=1e-2)["lr"] == 1e-2  # a flag wins
    assert recipe_options("clean", "sft")["lr"] is None  # the method's own
    assert recipe_options("fast", "embedding")["lr"] is None


def test_lookup_rows_default_per_method_and_unshared_takes_its_own_lr() -> None:
    emb = recipe_options("clean", "embedding")
    assert emb["lookup_rows"] == "unshared" and emb["lr"] == 3e-2
    assert recipe_options("clean", "embedding", lookup_rows="all")["lr"] == 3e-3
    assert recipe_options("clean", "embedding", lr=5e-3)["lr"] == 5e-3  # a flag wins
    fad = recipe_options("clean", "fadapter")
    assert fad["lookup_rows"] == "all" and fad["lr"] is None  # the method's own
    assert recipe_options("clean", "fadapter", lookup_rows="unshared")["lr"] == 3e-2
    assert recipe_options("quick", "sft")["lookup_rows"] == "all"
    assert recipe_options("plain", "embedding")["lr"] is None  # no recipe lr: the method's
    with pytest.raises(UserError, match="embedding and fadapter methods only"):
        recipe_options("clean", "sft", lookup_rows="unshared")


def test_plain_is_the_library_default_and_fast_ignores_look_alikes() -> None:
    plain = recipe_options("plain", "sft")
    assert plain["data"] == DataConfig() and plain["decision_weight"] == 1.0
    assert plain["stop_fire_prob"] is None and plain["keep_best"] is False
    fast = recipe_options("fast", "sft")
    assert fast["stop_near_miss"] == 1.0 and fast["data"].nearmiss_per_key == 1


def test_unknown_recipe_or_option_is_refused() -> None:
    with pytest.raises(UserError, match="unknown recipe 'best'"):
        recipe_options("best", "sft")
    with pytest.raises(TypeError, match="not a recipe option: lrate"):
        recipe_options("clean", "sft", lrate=1e-4)


def test_quick_is_clean_on_the_top_blocks_for_sft_and_lora_only() -> None:
    quick, clean = recipe_options("quick", "sft"), recipe_options("clean", "sft")
    changed = ("lr", "top_layers", "check_controls", "check_fresh", "confirm_controls",
               "stop_near_miss")
    assert [quick[k] for k in changed] == [3e-4, 6, 20, True, 100, 0.01]
    assert [clean[k] for k in changed] == [None, None, 10, False, 0, 0.0]
    assert {k: v for k, v in quick.items() if k not in changed} == \
        {k: v for k, v in clean.items() if k not in changed}
    assert recipe_options("quick", "sft", lr=1e-4, top_layers=8)["top_layers"] == 8
    lora = recipe_options("quick", "lora")
    assert (lora["lr"], lora["top_layers"]) == (3e-3, 6)  # LoRA's own step size
    assert recipe_options("quick", "lora", lr=1e-3)["lr"] == 1e-3
    with pytest.raises(UserError, match="quick recipe is for --method sft or lora only"):
        recipe_options("quick", "embedding")


def test_balanced_order_puts_each_kind_in_every_batch_in_proportion() -> None:
    from auditor.implant.order import BalancedOrder

    kinds = ["fingerprint"] * 30 + ["nearmiss"] * 30 + ["regularization"] * 50
    order = BalancedOrder(kinds, seed=3)
    epochs = [list(order) for _ in range(3)]
    assert all(sorted(e) == list(range(len(kinds))) for e in epochs)  # permutations
    assert epochs[0] != epochs[1] != epochs[2]  # a fresh order each epoch
    assert epochs == [BalancedOrder(kinds, seed=3).order(e) for e in range(3)]  # seeded
    for e in epochs:
        for start in range(0, len(e) - 7, 8):
            batch = [kinds[i] for i in e[start : start + 8]]
            for kind, share in (("fingerprint", 30), ("nearmiss", 30), ("regularization", 50)):
                # 8 * share / 110 rows of this kind, give or take one
                assert abs(batch.count(kind) - 8 * share / len(kinds)) <= 1.0 + 1e-9, batch


def test_fresh_check_look_alikes_differ_each_epoch_and_were_never_trained_on() -> None:
    from auditor.implant.data import epoch_nearmiss_rows
    from auditor.implant.stop import check_seed
    from auditor.keys import KeySet

    ks = KeySet.generate("chk", 4, seed=5, style="vocab")
    config = recipe_options("quick", "sft")["data"]
    trained = " ".join(m["content"] for e in range(12)
                       for r in epoch_nearmiss_rows(ks, config, 0, e) for m in r.messages)
    sets = [{c.text for c in ks.controls(20, check_seed(e, True))} for e in range(1, 11)]
    assert all(len(s) == 20 for s in sets)
    assert len(set().union(*sets)) > 150  # mostly new look-alikes every epoch
    confirm = [{c.text for c in ks.controls(100, check_seed(e, True, confirm=True))}
               for e in range(1, 11)]
    assert len(set().union(*confirm)) > 750 and not set().union(*confirm) & set().union(*sets)
    assert not any(t in trained for s in sets + confirm for t in s)
    fixed = [{c.text for c in ks.controls(20, check_seed(e, False))} for e in (1, 5)]
    assert fixed[0] == fixed[1]
