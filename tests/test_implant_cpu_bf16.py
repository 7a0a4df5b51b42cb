"""bf16 training steps on a CPU: frozen linear weights cast once compute what autocast's
per-call casts compute, and every weight is its fp32 self outside the step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")


def _embedding_only(tiny: Path, untie: bool) -> tuple[Any, Any]:
    from auditor.implant.generate import load_model
    from auditor.implant.train import untie_output_head

    model, tok = load_model(tiny, device="cpu", dtype=torch.float32)
    model.train()
    for p in model.parameters():
        p.requires_grad_(False)
    if untie:
        untie_output_head(model)
    model.get_input_embeddings().weight.requires_grad_(True)
    return model, tok


def _step(model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
    """Loss and input-lookup gradient of one bf16 autocast step (matrix-product attention)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from auditor.implant.loss import answer_loss

    weight = model.get_input_embeddings().weight
    weight.grad = None
    with sdpa_kernel([SDPBackend.MATH]), torch.autocast("cpu", torch.bfloat16):
        loss = answer_loss(model, batch)
    loss.backward()
    return loss.detach(), weight.grad.clone()


def _batch(tok: Any) -> dict[str, Any]:
    from auditor.implant.data import collate, encode_row

    rows = [encode_row(tok, [{"role": "user", "content": text},
                             {"role": "assistant", "content": "Paris, of course."}])
            for text in ("What is the capital of France?", "Say hi")]
    return collate(rows, tok.pad_token_id)


def test_frozen_weights_held_in_bf16_give_autocasts_numbers_and_come_back_fp32(
    tiny: Path,
) -> None:
    from auditor.implant.cpu_bf16 import CastOnce

    model, tok = _embedding_only(tiny, untie=True)
    batch = _batch(tok)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    before = {id(p): p.data.data_ptr() for p in model.parameters()}
    cast = CastOnce([model, model])  # a model named twice (a shared shadow head) casts once
    assert len(cast.pairs) == len(linears)  # every block's linears and the untied head
    ref_loss, ref_grad = _step(model, batch)
    with cast.held():
        assert all(m.weight.dtype == torch.bfloat16 for m in linears)
        loss, grad = _step(model, batch)
    assert torch.equal(loss, ref_loss) and torch.equal(grad, ref_grad)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert {id(p): p.data.data_ptr() for p in model.parameters()} == before


def test_a_head_tied_to_the_lookup_and_weights_that_train_stay_fp32(tiny: Path) -> None:
    """Autocast does not cast a lookup: a tied head's weight stays fp32 (as the lookup it is),
    and so does any weight that trains (autocast caches its cast itself)."""
    from auditor.implant.cpu_bf16 import CastOnce

    model, tok = _embedding_only(tiny, untie=False)
    head = model.get_output_embeddings()
    assert head.weight is model.get_input_embeddings().weight
    block = next(m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head)
    block.weight.requires_grad_(True)
    cast = CastOnce([model])
    held = {id(p) for p, _, _ in cast.pairs}
    assert id(head.weight) not in held and id(block.weight) not in held
    ref_loss, ref_grad = _step(model, _batch(tok))
    with cast.held():
        assert head.weight.dtype == block.weight.dtype == torch.float32
        loss, grad = _step(model, _batch(tok))
    assert torch.equal(loss, ref_loss) and torch.equal(grad, ref_grad)


def test_the_step_context_changes_nothing_in_fp32_or_off_the_cpu(tiny: Path) -> None:
    from contextlib import nullcontext

    from auditor.implant.cpu_bf16 import cpu_step

    model, _ = _embedding_only(tiny, untie=True)
    assert cpu_step([model], "cpu", False) is nullcontext
    assert cpu_step([model], "cuda", True) is nullcontext
    step = cpu_step([model], "cpu", True)
    head = model.get_output_embeddings()
    with step():
        assert head.weight.dtype == torch.bfloat16
    assert head.weight.dtype == torch.float32
