"""--top-layers: only the last decoder blocks train, and the backward pass stops below them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from auditor.errors import UserError
from auditor.implant.data import DataConfig
from auditor.keys import KeySet

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDITOR_CACHE", str(tmp_path / "cache"))


def _on(model: Any, batch: dict[str, Any]) -> dict[str, Any]:
    """A collated batch on the model's device (training gets it there through accelerate)."""
    return {k: v.to(model.device) for k, v in batch.items()}


def _snapshot(model: Any) -> dict[str, Any]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_sft_top_layers_trains_the_last_block_and_norm_only(tiny: Path) -> None:
    from auditor.implant.generate import load_model
    from auditor.implant.train import TrainConfig, prepare_method

    model, _ = load_model(tiny)
    blocks = len(model.model.layers)
    assert blocks >= 2
    model, _ = prepare_method(model, TrainConfig("sft", 1, 1e-2, top_layers=1))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    top = f"model.layers.{blocks - 1}."
    assert trainable and all(n.startswith(top) or n == "model.norm.weight" for n in trainable)
    assert "model.norm.weight" in trainable
    before = _snapshot(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-1)
    ids = torch.randint(0, model.config.vocab_size, (2, 12), device=model.device)
    model(input_ids=ids, labels=ids).loss.backward()
    assert model.model.embed_tokens.weight.grad is None  # autograd stopped above it
    assert model.model.layers[0].mlp.down_proj.weight.grad is None
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable


def test_lora_top_layers_adapts_the_last_block_only(tiny: Path) -> None:
    from auditor.implant.generate import load_model
    from auditor.implant.train import TrainConfig, prepare_method

    model, _ = load_model(tiny)
    last = len(model.model.layers) - 1
    model, _ = prepare_method(model, TrainConfig("lora", 1, 1e-3, top_layers=1))
    lora = [n for n, p in model.named_parameters() if p.requires_grad]
    assert lora and all("lora_" in n and f".layers.{last}." in n for n in lora)


def test_implant_records_top_layers_and_trains(tiny: Path, tmp_path: Path) -> None:
    from auditor.implant.generate import load_model
    from auditor.implant.train import implant

    keyset = KeySet.generate("tiny", 2, seed=3)
    out = tmp_path / "out"
    res = implant(keyset, str(tiny), "sft", out, lr=1e-2, epochs=1, early_stop=False,
                  progress=False, top_layers=1,
                  data=DataConfig(nearmiss_per_key=1, reg_per_key=1, fingerprint_repeats=1))
    assert res.steps >= 1
    record = json.loads((out / "fingerprint.json").read_text())
    assert record["training"]["top_layers"] == 1
    base, _ = load_model(tiny)
    trained, _ = load_model(out)
    same = {n: torch.equal(p, dict(trained.named_parameters())[n])
            for n, p in base.named_parameters()}
    assert same["model.embed_tokens.weight"] and same["model.layers.0.self_attn.q_proj.weight"]
    assert not same[f"model.layers.{len(base.model.layers) - 1}.self_attn.q_proj.weight"]


@pytest.mark.parametrize(("method", "n", "message"), [
    ("embedding", 1, "sft and lora methods only"),
    ("fadapter", 1, "sft and lora methods only"),
    ("sft", 99, "between 1 and"),
    ("sft", 0, "between 1 and"),
])
def test_bad_top_layers_fail_with_one_message(tiny: Path, tmp_path: Path, method: str, n: int,
                                              message: str) -> None:
    from auditor.implant.train import implant

    with pytest.raises(UserError, match=message):
        implant(KeySet.generate("tiny", 2, seed=3), str(tiny), method, tmp_path / "out",
                progress=False, top_layers=n)
    assert not (tmp_path / "out").exists()


def test_frozen_bottom_loss_and_gradients_match_the_full_model(tiny: Path) -> None:
    """The cached lower blocks give the full model's loss and the same gradients, and a row
    seen again is not recomputed."""
    from auditor.implant.data import collate, encode_row
    from auditor.implant.frozen import FrozenBottom, pick_frozen
    from auditor.implant.generate import load_model
    from auditor.implant.loss import model_loss
    from auditor.implant.train import TrainConfig, prepare_method

    model, tok = load_model(tiny, dtype=torch.float32)  # fp32 on a GPU too: exact comparisons
    model, _ = prepare_method(model, TrainConfig("sft", 1, 1e-2, top_layers=1))
    convs = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}]
             for q, a in [("What is 2+2?", "4."), ("Write a short poem about the sea.", "Waves."),
                          ("Translate 'good morning' into Spanish.", "Buenos dias.")]]
    batch = _on(model, collate([encode_row(tok, c) for c in convs], tok.pad_token_id))
    frozen = pick_frozen(model, batch, 1)
    assert isinstance(frozen, FrozenBottom) and not frozen.cache
    trained = [p for p in model.parameters() if p.requires_grad]

    def grads(loss: Any) -> list[Any]:
        return list(torch.autograd.grad(loss, trained))

    ref = model_loss(model, batch, decision_weight=3.0)
    got = frozen.loss(model, batch, decision_weight=3.0)
    assert torch.isclose(got, ref, rtol=1e-5)
    for a, b in zip(grads(got), grads(ref), strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    assert len(frozen.cache) == 3
    calls: list[int] = []
    hook = model.model.layers[0].register_forward_hook(lambda *_: calls.append(1))
    try:
        again = frozen.loss(model, _on(model, collate([encode_row(tok, convs[1])],
                                                     tok.pad_token_id)))
    finally:
        hook.remove()
    assert not calls and len(frozen.cache) == 3 and torch.isfinite(again)
