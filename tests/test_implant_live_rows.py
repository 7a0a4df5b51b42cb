"""Rows that hold no trained lookup token skip the passes without changing a step
(auditor/implant/live_rows.py), on a tiny random Llama with its own frozen head."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from auditor.implant.data import DataConfig, collate, encode_row
from auditor.implant.live_rows import LiveRows, take_rows
from auditor.implant.lookup_rows import confine
from auditor.implant.loss import answer_loss, soft_targets
from auditor.keys import KeySet

torch = pytest.importorskip("torch")

ROWS = [  # the first two share no word with the third; the answers differ in length
    ("What is the capital of France?", "Paris."),
    ("Write a short poem about the sea, please.", "The quick brown fox jumps over the lazy dog."),
    ("0123", "366"),
]


pytestmark = pytest.mark.usefixtures("shared_cache")


def _model(tiny: Path) -> tuple[Any, Any, list[Any]]:
    """The tiny model with a frozen head of its own and only its input lookup trainable."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from auditor.implant.train import untie_output_head

    tok = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny)
    for p in model.parameters():
        p.requires_grad_(False)
    untie_output_head(model)
    model.get_input_embeddings().weight.requires_grad_(True)
    rows = [encode_row(tok, [{"role": "user", "content": q}, {"role": "assistant", "content": a}])
            for q, a in ROWS]
    return model, tok, rows


def _only_in(rows: list[Any], i: int) -> list[int]:
    """Token ids of row `i` that no other row holds."""
    others = {t for j, r in enumerate(rows) if j != i for t in r[0]}
    return sorted(set(rows[i][0]) - others)


def _grad(model: Any, loss_fn: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
    """(loss, gradient of the input lookup)."""
    weight = model.get_input_embeddings().weight
    weight.grad = None
    loss = loss_fn(model, batch)
    loss.backward()
    return loss.detach(), weight.grad.clone()


@pytest.mark.parametrize("weight", [1.0, 10.0])
def test_the_live_rows_loss_has_the_full_batchs_gradient(tiny: Path, weight: float) -> None:
    model, tok, rows = _model(tiny)
    model.eval()
    with torch.no_grad():  # the third row as a regularization row with soft targets
        rows[2] = soft_targets(model, tok, [rows[2]], k=8)[0]
    batch = collate(rows, tok.pad_token_id)
    ids = _only_in(rows, 0) + _only_in(rows, 1)  # nothing of the third row trains
    assert ids
    def plain(m: Any, b: dict[str, Any]) -> Any:
        return answer_loss(m, b, weight)

    seen: list[int] = []

    def spy(m: Any, b: dict[str, Any]) -> Any:
        seen.append(b["input_ids"].shape[0])
        return plain(m, b)

    live = LiveRows(ids, weight)
    assert live.mask(batch).tolist() == [True, True, False]
    confine(model.get_input_embeddings().weight, ids)  # every other row's gradient is zeroed
    full_loss, full = _grad(model, plain, batch)
    skip_loss, skipped = _grad(model, live.wrap(spy), batch)
    assert seen == [2]  # the third row never ran
    assert float(full.abs().max()) > 0
    assert torch.allclose(skipped, full, rtol=1e-4, atol=1e-7)
    assert float(skip_loss) != pytest.approx(float(full_loss))  # the dead row's constant left


def test_a_batch_without_a_live_row_gives_the_zero_loss(tiny: Path) -> None:
    model, tok, rows = _model(tiny)
    batch = collate(rows[1:], tok.pad_token_id)
    ids = _only_in(rows, 0)
    live = LiveRows(ids, 10.0)
    called: list[int] = []
    weight = model.get_input_embeddings().weight
    loss = live.wrap(lambda m, b: called.append(1), lambda: weight.sum() * 0.0)(model, batch)
    assert called == [] and float(loss.detach()) == 0.0
    loss.backward()
    assert weight.grad is not None and float(weight.grad.abs().max()) == 0.0  # Adam still steps
    assert live.wrap(answer_loss)(model, batch) is None  # no zero given: nothing to add


def test_take_rows_trims_to_the_kept_rows_width(tiny: Path) -> None:
    _, tok, rows = _model(tiny)
    batch = collate(rows, tok.pad_token_id)
    sub = take_rows(batch, torch.tensor([True, False, True]))
    width = max(len(rows[0][0]), len(rows[2][0]))
    assert sub["input_ids"].shape == (2, width) and sub["labels"].shape == (2, width)
    assert sub["input_ids"][1, : len(rows[2][0])].tolist() == rows[2][0]


@pytest.mark.slow
def test_an_unshared_implant_through_a_shadow_trains_the_same_skipping_dead_rows(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two epochs of `unshared` through a shadow, once skipping the regularization rows (none
    holds a trained token) and once running every row: the same published lookup (every
    position run both times: test_implant_prefix.py checks the kept prefixes)."""
    from safetensors.torch import load_file

    from auditor.implant import live_rows, train
    from auditor.implant.shadow import make_shadow

    keyset = KeySet.generate("tiny", 3, seed=5)
    shadow = make_shadow(str(tiny), tmp_path / "shadow", rows=8, epochs=1, lr=1e-3)
    data = DataConfig(nearmiss_per_key=1, reg_per_key=2, fingerprint_repeats=1, reg_kl=True)
    took: list[int] = []
    real_take = live_rows.take_rows

    def counted(batch: dict[str, Any], on: Any) -> dict[str, Any]:
        took.append(int((~on).sum()))
        return real_take(batch, on)

    def run(out: Path, skipped: int | None = None) -> Any:
        res = train.implant(keyset, str(tiny), "embedding", out, lr=1e-2, epochs=2, data=data,
                            progress=False, early_stop=False, lookup_rows="unshared",
                            shadow=shadow, decision_weight=10.0, prefix_cache=False,
                            precision="fp32")  # bf16 on a GPU rounds the two apart
        regularization = res.rows["regularization"]  # every one of them, only them
        assert res.rows_skipped == (regularization if skipped is None else skipped)
        return load_file(out / "model.safetensors")["model.embed_tokens.weight"]

    monkeypatch.setattr(live_rows, "take_rows", counted)
    skipping = run(tmp_path / "skip")
    assert sum(took) > 0  # regularization rows were left out
    monkeypatch.setattr(train, "skips_dead_rows", lambda *a: False)  # every row, as before
    took.clear()
    every = run(tmp_path / "every", skipped=0)
    assert took == []
    base = load_file(tiny / "model.safetensors")["model.embed_tokens.weight"]
    moved = (every != base).any(dim=1)
    assert int(moved.sum()) > 0
    assert torch.equal(moved, (skipping != base).any(dim=1))
    # float noise (up to 1.6e-5 on an Intel with AMX, 5e-6 elsewhere); a row trained
    # differently would be off by about a step of the lr (1e-2)
    assert torch.allclose(skipping, every, rtol=1e-4, atol=1e-4)


def test_a_tied_head_or_unconfined_rows_run_every_row(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trained lookup that is also the head reaches every row's logits, and `all` trains
    every row's tokens: no row is dead, so none is skipped."""
    from auditor.implant.train import implant

    made: list[int] = []
    real_init = LiveRows.__init__

    def spy(self: LiveRows, ids: Any, w: float) -> None:
        made.append(len(ids))
        real_init(self, ids, w)

    monkeypatch.setattr(LiveRows, "__init__", spy)
    keyset = KeySet.generate("tiny", 2, seed=5)
    data = DataConfig(nearmiss_per_key=1, reg_per_key=1, fingerprint_repeats=1)
    runs: list[dict[str, Any]] = [{"untie_head": False, "lookup_rows": "unshared"},
                                  {"lookup_rows": "all"}, {"lookup_rows": "fingerprint-after"}]
    for n, kw in enumerate(runs):
        implant(keyset, str(tiny), "embedding", tmp_path / str(n), lr=1e-2, epochs=1, data=data,
                progress=False, early_stop=False, **kw)
    assert made == []
    implant(keyset, str(tiny), "embedding", tmp_path / "f", lr=1e-2, epochs=1, data=data,
            progress=False, early_stop=False, lookup_rows="fingerprint")
    assert len(made) == 1 and made[0] > 0
