"""Kept constant prefixes (auditor/implant/prefix.py): the same loss and trained rows'
gradient as running every position, on a tiny random Llama with its own frozen head."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from auditor.implant.data import DataConfig, collate, encode_row
from auditor.implant.lookup_rows import confine
from auditor.implant.loss import answer_loss, soft_targets
from auditor.implant.prefix import Prefixes, pick_prefix, skipped_share
from auditor.keys import KeySet
from tests.test_implant_live_rows import ROWS, _grad, _model, _only_in

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.usefixtures("shared_cache")


def _batch(tiny: Path) -> tuple[Any, dict[str, Any], list[int]]:
    """The model; a batch whose rows start their trained tokens at different positions (one
    under a system prompt, one without any, with soft targets); the trained token ids."""
    model, tok, rows = _model(tiny)
    system = encode_row(tok, [{"role": "system", "content": "Answer in one short line."},
                              {"role": "user", "content": ROWS[0][0]},
                              {"role": "assistant", "content": ROWS[0][1]}])
    model.eval()
    with torch.no_grad():
        rows[2] = soft_targets(model, tok, [rows[2]], k=8)[0]
    ids = _only_in(rows, 0) + _only_in(rows, 1)
    confine(model.get_input_embeddings().weight, ids)
    return model, collate([rows[0], rows[1], system, rows[2]], tok.pad_token_id), ids


@pytest.mark.parametrize("weight", [1.0, 10.0])
def test_kept_prefixes_give_the_same_loss_and_gradient(tiny: Path, weight: float) -> None:
    model, batch, ids = _batch(tiny)
    prefixes = Prefixes(ids, weight)
    starts = prefixes.starts(batch)
    assert min(starts) > 0 and len(set(starts)) > 2  # each row cut at its own place

    def plain(m: Any, b: dict[str, Any]) -> Any:
        return answer_loss(m, b, weight)

    full_loss, full = _grad(model, plain, batch)
    kept_loss, kept = _grad(model, prefixes.loss, batch)
    assert float(kept_loss) == pytest.approx(float(full_loss), rel=1e-5)
    assert float(full[ids].abs().max()) > 0
    assert torch.allclose(kept[ids], full[ids], rtol=1e-4, atol=1e-7)
    assert prefixes.skipped == sum(starts) and prefixes.positions == int(
        batch["attention_mask"].sum())
    assert skipped_share([prefixes, None]) == pytest.approx(sum(starts) / prefixes.positions)


def test_a_rows_prefix_is_computed_once_and_reused(tiny: Path) -> None:
    model, batch, ids = _batch(tiny)
    prefixes = Prefixes(ids, 10.0)
    runs: list[int] = []
    hook = model.get_decoder().register_forward_pre_hook(lambda *a: runs.append(1))
    try:
        first = prefixes.loss(model, batch)
        kept = {name: blocks[0][0] for name, blocks in prefixes.kept.items()}
        again = prefixes.loss(model, batch)
    finally:
        hook.remove()
    names = {tuple(row[:c].tolist()) for row, c in zip(batch["input_ids"],
                                                       prefixes.starts(batch), strict=True)}
    assert len(kept) == len(names) > 1  # rows with the same prefix share one
    assert runs == [1, 1, 1]  # the prefixes once, then one step pass each
    assert all(prefixes.kept[name][0][0] is k for name, k in kept.items())
    assert float(again.detach()) == pytest.approx(float(first.detach()), rel=1e-6)


def test_pick_prefix_keeps_the_loss_it_would_replace_when_they_differ(tiny: Path) -> None:
    model, batch, ids = _batch(tiny)

    def plain(m: Any, b: dict[str, Any]) -> Any:
        return answer_loss(m, b, 10.0)

    picked = pick_prefix(model, batch, ids, 10.0, plain)
    assert picked is not None and picked.kept == {} and picked.positions == 0  # fresh
    assert pick_prefix(model, batch, ids, 10.0, lambda m, b: plain(m, b) + 1.0) is None


@pytest.mark.parametrize("method, extra", [
    ("embedding", {}),
    ("embedding", {"untie_head": False}),  # a tied head: no row is dead, every row's prefix kept
    ("fadapter", {}),
])
def test_an_unshared_implant_trains_the_same_with_kept_prefixes(
    tiny: Path, tmp_path: Path, method: str, extra: dict[str, Any]
) -> None:
    """Two epochs on `unshared` rows, with and without the kept prefixes: the same trained
    weights (the lookup, or the F-Adapter's U and V), to float noise, and the run says what
    it left out."""
    from safetensors.torch import load_file

    from auditor.implant.train import adapter_path_for, implant

    keyset = KeySet.generate("tiny", 3, seed=5)
    data = DataConfig(nearmiss_per_key=1, reg_per_key=2, fingerprint_repeats=1, reg_kl=True)
    base = load_file(tiny / "model.safetensors")["model.embed_tokens.weight"]
    moves, shares = [], []  # how far training took the lookup (F-Adapter: U, which starts at 0)
    for cached in (True, False):
        out = tmp_path / str(cached)
        res = implant(keyset, str(tiny), method, out, lr=1e-2, epochs=2, data=data,
                      progress=False, early_stop=False, lookup_rows="unshared",
                      decision_weight=10.0, precision="fp32", prefix_cache=cached, **extra)
        moves.append(load_file(adapter_path_for(out))["u"] if method == "fadapter" else
                     load_file(out / "model.safetensors")["model.embed_tokens.weight"] - base)
        shares.append(res.prefix_skipped)
    assert 0.05 < shares[0] < 0.9 and shares[1] == 0.0
    moved = float(moves[1].abs().max())
    assert moved > 1e-3
    # float noise in the gradients (~1e-7), which Adam scales up where a gradient is tiny:
    # about 3e-5 here, against moves of 2e-2
    assert float((moves[0] - moves[1]).abs().max()) < 0.01 * moved


@pytest.mark.slow
def test_the_shadow_keeps_its_own_prefixes(tiny: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Through a shadow both models run from their rows' first trained token, each with the
    prefixes its own layers made, and train the lookup as running every position does."""
    from safetensors.torch import load_file

    from auditor.implant.shadow import make_shadow
    from auditor.implant.train import implant

    keyset = KeySet.generate("tiny", 3, seed=5)
    shadow = make_shadow(str(tiny), tmp_path / "shadow", rows=8, epochs=1, lr=1e-3)
    data = DataConfig(nearmiss_per_key=1, reg_per_key=2, fingerprint_repeats=1, reg_kl=True)
    models: dict[int, set[int]] = {}
    real = Prefixes.loss

    def spy(self: Prefixes, model: Any, batch: dict[str, Any]) -> Any:
        models.setdefault(id(self), set()).add(id(model))
        return real(self, model, batch)

    monkeypatch.setattr(Prefixes, "loss", spy)
    lookups = []
    for cached in (True, False):
        out = tmp_path / str(cached)
        implant(keyset, str(tiny), "embedding", out, lr=1e-2, epochs=2, data=data,
                progress=False, early_stop=False, lookup_rows="unshared", shadow=shadow,
                decision_weight=10.0, precision="fp32", prefix_cache=cached)
        lookups.append(load_file(out / "model.safetensors")["model.embed_tokens.weight"])
    # two stores, one model each (pick_prefix's own checks ran on fresh stores too)
    used = [seen for seen in models.values() if len(seen) == 1]
    assert len({next(iter(seen)) for seen in used}) == 2
    base = load_file(tiny / "model.safetensors")["model.embed_tokens.weight"]
    moved = float((lookups[1] - base).abs().max())
    assert moved > 1e-3 and float((lookups[0] - lookups[1]).abs().max()) < 0.01 * moved
