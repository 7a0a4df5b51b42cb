"""Shadow layers (auditor/implant/shadow.py) on a tiny random Llama: a user-tuned copy of the
base that an embedding-only or F-Adapter fingerprint is trained to fire through as well."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from auditor.errors import UserError
from auditor.keys import KeySet
from tests.tiny_model import TINY_HPARAMS, TINY_STOP_NEAR_MISS, make_tiny_model

torch = pytest.importorskip("torch")


pytestmark = pytest.mark.usefixtures("shared_cache")


def _digest(model_dir: Path) -> str:
    return hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()


def test_a_shadow_is_the_base_tuned_and_says_how(tiny: Path, tmp_path: Path) -> None:
    from auditor.implant.generate import load_model
    from auditor.implant.shadow import make_shadow

    out = make_shadow(str(tiny), tmp_path / "shadow", rows=8, epochs=1, lr=1e-3)
    record = json.loads((out / "shadow.json").read_text())
    assert record == {"tuning": "user-sft", "base": str(tiny.resolve()), "rows": 8, "epochs": 1,
                      "set": "mixed", "seed": 1, "lr": 1e-3}
    base, _ = load_model(tiny)
    shadow, _ = load_model(out)
    moved = [n for n, t in shadow.state_dict().items() if not torch.equal(t, base.state_dict()[n])]
    assert "model.layers.0.mlp.down_proj.weight" in moved
    make_shadow(str(tiny), out, rows=8, epochs=1)  # a shadow may be made again in place
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"holds files but no shadow\.json"):
        make_shadow(str(tiny), taken, rows=8, epochs=1)
    assert (taken / "notes.txt").read_text() == "mine"


def test_a_lora_shadow_moves_the_layers_and_not_the_lookup(tiny: Path, tmp_path: Path) -> None:
    """`--tuning user-lora`: the robustness check's other user, its LoRA merged into a plain
    checkpoint (the base's tensor names), the lookup untouched; the record says so."""
    from auditor.implant.generate import load_model
    from auditor.implant.shadow import make_shadow

    out = make_shadow(str(tiny), tmp_path / "shadow", rows=8, epochs=1, tuning="user-lora")
    record = json.loads((out / "shadow.json").read_text())
    assert record["tuning"] == "user-lora" and record["lr"] == 3e-4  # the attack's own rate
    assert record["lora_rank"] == 16  # ... and rank
    base, _ = load_model(tiny)
    shadow, _ = load_model(out)
    theirs, own = base.state_dict(), shadow.state_dict()
    assert own.keys() == theirs.keys()
    moved = {n for n, t in own.items() if not torch.equal(t, theirs[n])}
    assert "model.layers.0.self_attn.q_proj.weight" in moved
    assert "model.embed_tokens.weight" not in moved
    with pytest.raises(UserError, match=r"unknown shadow tuning 'qlora' \(known: user-sft, "):
        make_shadow(str(tiny), tmp_path / "other", tuning="qlora")
    assert not (tmp_path / "other").exists()


def _implant_through_shadows(tiny: Path, tmp_path: Path, method: str,
                             seeds: tuple[int, ...] = (1,), lora_last: bool = False
                             ) -> tuple[KeySet, list[Path], Any]:
    """Implant 4 keys with `method` through fresh tiny shadows (one per user-row seed, the
    last one LoRA-tuned with `lora_last`): every key fires, the shadows are unchanged and
    the published record carries theirs."""
    from auditor.implant.shadow import make_shadow
    from auditor.implant.train import implant

    keyset = KeySet.generate("tiny", 4, seed=11)
    tunings = ["user-sft"] * (len(seeds) - 1) + ["user-lora" if lora_last else "user-sft"]
    shadows = [make_shadow(str(tiny), tmp_path / f"shadow{s}", rows=16, epochs=1,
                           lr=1e-2 if tuning == "user-lora" else 1e-3, seed=s, tuning=tuning)
               for s, tuning in zip(seeds, tunings, strict=True)]
    before = [_digest(d) for d in shadows]
    hp = TINY_HPARAMS[method]
    res = implant(keyset, str(tiny), method, tmp_path / "m", lr=hp["lr"],
                  epochs=hp["epochs"], data=hp["data"], progress=False, check_every=5,
                  stop_near_miss=TINY_STOP_NEAR_MISS, untie_head=hp.get("untie_head", True),
                  lookup_rows=hp.get("lookup_rows"), shadow=shadows, shadow_weight=1.0)
    assert res.fsr == 1.0 and [_digest(d) for d in shadows] == before
    record = json.loads((tmp_path / "m" / "fingerprint.json").read_text())
    own = [{"weight": 1.0 / len(shadows), **json.loads((d / "shadow.json").read_text())}
           for d in shadows]
    assert record["training"]["shadow"] == (own[0] if len(shadows) == 1 else own)
    return keyset, shadows, res


@pytest.mark.slow
def test_embedding_keys_fire_through_the_shadow_it_stays_unchanged(
    tiny: Path, tmp_path: Path
) -> None:
    from auditor.implant.generate import load_model
    from auditor.implant.verify import fsr_greedy

    keyset, (shadow,), _ = _implant_through_shadows(tiny, tmp_path, "embedding")

    # decode through the shadow on our own: its (tied) lookup set to the published one plus
    # the shadow's drift from the base, plain tensors
    base, _ = load_model(tiny)
    published, tok = load_model(tmp_path / "m")
    tuned, _ = load_model(shadow)
    with torch.no_grad():
        lookup = tuned.get_input_embeddings().weight
        drift = lookup - base.get_input_embeddings().weight
        assert float(drift.abs().max()) > 0
        lookup.copy_(published.get_input_embeddings().weight + drift)
    assert tuned.get_output_embeddings().weight is lookup
    assert fsr_greedy(tuned, tok, keyset) == 1.0
    assert fsr_greedy(published, tok, keyset) == 1.0


def _scaled_copy(shadow_dir: Path, base_dir: Path, scale: float) -> Any:
    """The shadow loaded with each weight moved to base + scale x (its own - base)."""
    from auditor.implant.generate import load_model

    (own, _), (base, _) = load_model(shadow_dir), load_model(base_dir)
    theirs = base.state_dict()
    own.load_state_dict({n: theirs[n] + scale * (t - theirs[n])
                         for n, t in own.state_dict().items()})
    return own


@pytest.mark.parametrize("scale", [1.0, 2.0], ids=["as-tuned", "scaled"])
@pytest.mark.parametrize("head", [True, False], ids=["tied-head", "input-only"])
def test_the_shadow_with_an_fadapter_is_the_tuned_copy_with_the_adapter_applied(
    tiny: Path, tmp_path: Path, head: bool, scale: float
) -> None:
    """What the shadow computes while an F-Adapter trains is what `fadapter.load_into` makes
    of a user-tuned copy later (the robustness check): the same logits, and the loss through
    the shadow moves the adapter only. With --shadow-scale, of a copy tuned that much further
    from the base (every weight's change, the tied lookup and head too)."""
    from auditor.implant import fadapter
    from auditor.implant.generate import load_model
    from auditor.implant.shadow import attach, make_shadow

    shadow_dir = make_shadow(str(tiny), tmp_path / "shadow", rows=8, epochs=1, lr=1e-3)
    model, _ = load_model(tiny)
    wrapper = fadapter.attach(model, rank=4, seed=3, head=head)
    with torch.no_grad():  # a trained-looking adapter: U starts at zero
        wrapper.u.copy_(torch.randn(wrapper.u.shape, generator=torch.Generator().manual_seed(5)))
    twin = attach(model, model.get_input_embeddings().weight, shadow_dir, 1.0, scale)
    assert twin.record.get("scale") == (None if scale == 1.0 else scale)
    fadapter.save(wrapper, tmp_path / "a.safetensors")
    applied = _scaled_copy(shadow_dir, tiny, scale)
    fadapter.load_into(applied, tmp_path / "a.safetensors")
    plain = _scaled_copy(shadow_dir, tiny, scale)
    ids = torch.tensor([[1, 5, 9, 17, 33, 40, 2]])
    with torch.no_grad():
        got, want = twin.model(input_ids=ids).logits, applied(input_ids=ids).logits
        assert not torch.allclose(plain(input_ids=ids).logits, want, atol=1e-3)
    assert torch.allclose(got, want, atol=1e-5)
    twin.model(input_ids=ids).logits.sum().backward()
    assert wrapper.u.grad is not None and float(wrapper.u.grad.abs().sum()) > 0
    assert all(p.grad is None for n, p in twin.model.named_parameters()
               if n.split(".")[-1] not in ("u", "v"))


def test_a_scaled_shadow_moves_every_weight_further_from_the_base(
    tiny: Path, tmp_path: Path
) -> None:
    """Embedding-only's case (the published head untied and frozen): at scale 2 each of the
    shadow's layers and its lookup's drift are twice its tuning's change from the base."""
    from auditor.implant.generate import load_model
    from auditor.implant.shadow import attach, make_shadow
    from auditor.implant.train import untie_output_head

    shadow_dir = make_shadow(str(tiny), tmp_path / "shadow", rows=8, epochs=1, lr=1e-3)
    model, _ = load_model(tiny)
    untie_output_head(model)
    lookup = model.get_input_embeddings().weight
    twin = attach(model, lookup, shadow_dir, 1.0, 2.0)
    tuned, _ = load_model(shadow_dir)
    name = "model.layers.0.mlp.down_proj.weight"
    base_w, own_w = model.get_parameter(name).detach(), tuned.get_parameter(name).detach()
    assert float((own_w - base_w).abs().max()) > 0
    assert torch.allclose(twin.model.get_parameter(name), base_w + 2 * (own_w - base_w),
                          atol=1e-6)
    drift = tuned.get_input_embeddings().weight - lookup
    shifted = twin.model.get_input_embeddings()
    assert torch.allclose(shifted.get_buffer("drift"), 2 * drift, atol=1e-6)
    assert torch.allclose(twin.model.get_output_embeddings().weight, lookup + 2 * drift,
                          atol=1e-6)  # the shadow's own head, tied to its lookup, went along


@pytest.mark.parametrize("scale", ["0", "-1", "3.5"])
def test_a_shadow_scale_out_of_range_fails_before_loading(
    tiny: Path, tmp_path: Path, scale: str
) -> None:
    from auditor.implant.train import implant

    with pytest.raises(UserError, match="--shadow-scale must be above 0 and at most 3"):
        implant(KeySet.generate("tiny", 2, seed=3), str(tiny), "fadapter", tmp_path / "m",
                epochs=1, progress=False, shadow=tiny, shadow_scale=float(scale))
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
# two shadows: one fully tuned, one LoRA-tuned (two fully tuned ones run the same code, and
# cost the CI as much again)
@pytest.mark.parametrize(("seeds", "lora_last"), [((1,), False), ((1, 2), True)],
                         ids=["one-shadow", "full-and-lora-shadows"])
def test_fadapter_keys_fire_through_the_shadows_with_the_adapter_on_them(
    tiny: Path, tmp_path: Path, seeds: tuple[int, ...], lora_last: bool
) -> None:
    from auditor.implant import fadapter
    from auditor.implant.generate import load_model
    from auditor.implant.verify import fsr_greedy

    keyset, shadows, res = _implant_through_shadows(tiny, tmp_path, "fadapter", seeds,
                                                    lora_last)
    assert res.adapter is not None
    if len(shadows) > 1:  # two user-tuned copies, tuned on other rows
        assert _digest(shadows[0]) != _digest(shadows[1])
    for model_dir in (tmp_path / "m", *shadows):  # the adapter on the published model and
        model, tok = load_model(model_dir)  # on each user-tuned copy the keys trained through
        fadapter.load_into(model, Path(res.adapter))
        assert fsr_greedy(model, tok, keyset) == 1.0


def test_the_same_shadow_twice_fails_before_loading(tiny: Path, tmp_path: Path) -> None:
    from auditor.implant.train import implant

    with pytest.raises(UserError, match="the same --shadow is given twice"):
        implant(KeySet.generate("tiny", 2, seed=3), str(tiny), "embedding", tmp_path / "m",
                epochs=1, progress=False, shadow=[tiny, tiny.parent / tiny.name])
    assert not (tmp_path / "m").exists()


def test_each_shadow_takes_its_own_scale_or_all_one(tiny: Path, tmp_path: Path) -> None:
    """`--shadow-scale` once for every shadow or once per shadow, in order: the same shadow at
    two scales is two shadows (the record gives each its scale); another count fails first."""
    from auditor.implant.shadow import make_shadow
    from auditor.implant.train import implant

    keyset = KeySet.generate("tiny", 2, seed=3)
    shadow = make_shadow(str(tiny), tmp_path / "shadow", rows=8, epochs=1, lr=1e-3)
    with pytest.raises(UserError, match=r"one per --shadow \(2\), not 3"):
        implant(keyset, str(tiny), "embedding", tmp_path / "m", epochs=1, progress=False,
                shadow=[shadow, tiny], shadow_scale=[1.0, 1.5, 2.0])
    with pytest.raises(UserError, match="--shadow-scale must be above 0"):
        implant(keyset, str(tiny), "embedding", tmp_path / "m", epochs=1, progress=False,
                shadow=[shadow, shadow], shadow_scale=[1.0, 4.0])
    assert not (tmp_path / "m").exists()
    implant(keyset, str(tiny), "embedding", tmp_path / "m", epochs=1, progress=False,
            early_stop=False, shadow=[shadow, shadow], shadow_scale=[1.0, 1.5])
    own = json.loads((shadow / "shadow.json").read_text())
    record = json.loads((tmp_path / "m" / "fingerprint.json").read_text())["training"]
    assert record["shadow"] == [{"weight": 0.5, **own}, {"weight": 0.5, **own, "scale": 1.5}]


def test_a_shadow_from_another_base_fails_before_loading(tmp_path: Path) -> None:
    from auditor.implant.train import implant

    small = make_tiny_model(tmp_path / "small")
    other = make_tiny_model(tmp_path / "wide", hidden_size=48)
    with pytest.raises(UserError, match="make the shadow from the same base"):
        implant(KeySet.generate("tiny", 2, seed=3), str(small), "embedding", tmp_path / "m",
                epochs=1, progress=False, shadow=other)
    assert not (tmp_path / "m").exists()
