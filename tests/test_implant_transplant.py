"""The white-box check on the owner's layers: a suspect's input lookup in the published model."""

from __future__ import annotations

from pathlib import Path

import pytest

from auditor.errors import UserError
from tests.tiny_model import make_tiny_model

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("pub"))


def _tuned_copy(published: Path, out: Path, **save: object) -> Path:
    """What a user's fine-tuning leaves: every weight moved a little."""
    from auditor.implant.generate import load_model

    model, tok = load_model(published)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=gen).to(p))  # on a GPU: its device
    model.save_pretrained(out, **save)
    tok.save_pretrained(out)
    return out


@pytest.mark.parametrize(
    "save",
    [{}, {"max_shard_size": "200KB"}, {"safe_serialization": False}],
    ids=["one-file", "sharded", "pytorch-bin"],
)
def test_takes_the_suspects_lookup_and_keeps_the_published_layers(
    published: Path, tmp_path: Path, save: dict[str, object]
) -> None:
    from auditor.implant.generate import load_model
    from auditor.implant.transplant import with_embeddings_from

    suspect = _tuned_copy(published, tmp_path / "suspect", **save)
    model, _ = with_embeddings_from(published, suspect)
    pub, _ = load_model(published)
    sus, _ = load_model(suspect)
    emb = model.get_input_embeddings().weight
    assert torch.equal(emb, sus.get_input_embeddings().weight)
    assert not torch.equal(emb, pub.get_input_embeddings().weight)
    ours, theirs = model.state_dict(), pub.state_dict()
    for name in ("model.layers.0.mlp.up_proj.weight", "model.layers.1.self_attn.q_proj.weight",
                 "model.norm.weight"):
        assert torch.equal(ours[name], theirs[name]), name
    assert model.get_output_embeddings().weight is emb  # the tiny model ties its head


def test_refuses_another_vocabulary_and_non_checkpoints(published: Path, tmp_path: Path) -> None:
    from auditor.implant.transplant import with_embeddings_from

    other = make_tiny_model(tmp_path / "other", hidden_size=128)
    with pytest.raises(UserError, match="not the same vocabulary and width"):
        with_embeddings_from(published, other)
    with pytest.raises(UserError, match="suspect model is not a transformers checkpoint"):
        with_embeddings_from(published, tmp_path / "nothing")
