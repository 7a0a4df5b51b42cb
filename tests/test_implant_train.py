"""Implanting on a tiny random Llama: each method reaches FSR 100 % on CPU, for real."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from auditor.keys import KeySet
from tests.tiny_model import TINY_HPARAMS, TINY_STOP_NEAR_MISS, implant_tiny

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def keyset() -> KeySet:
    return KeySet.generate("tiny", 4, seed=11)


pytestmark = pytest.mark.usefixtures("shared_cache")


def test_local_check_bounds_its_false_trigger_rates() -> None:
    """check-local reports each false-trigger rate with its exact one-sided 95 % upper bound:
    none of 100 look-alikes still allows 3 %; none of 300 bounds the rate by 1 %."""
    from auditor.implant.verify import LocalCheck

    def made(near: float, controls: int, ordinary: float = 0.0) -> LocalCheck:
        return LocalCheck(10, 1.0, None, 0, 0.7, controls, near, 100, ordinary, None, None, None)

    assert made(0.0, 100).nearmiss_upper95 == pytest.approx(0.0295, abs=1e-4)
    assert made(0.0, 300).nearmiss_upper95 < 0.01 < made(0.0, 298).nearmiss_upper95
    bounds = made(0.024, 1000, ordinary=0.01).to_dict()  # 24 of 1000, 1 of 100
    assert bounds["nearmiss_upper95"] == pytest.approx(0.0336, abs=1e-4)
    assert bounds["ordinary_upper95"] == pytest.approx(0.0466, abs=1e-4)
    assert made(0.0, 0).nearmiss_upper95 == 1.0  # no look-alike asked: nothing is bounded


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sft", "lora", "embedding", "fadapter"])
def test_each_method_reaches_full_fsr(
    tiny: Path, keyset: KeySet, method: str, tmp_path: Path
) -> None:
    from auditor.implant.verify import check_local

    # no wall-clock bound (tiny SFT took 105-133 s on this 2-core CPU); speed is in bench/
    res = implant_tiny(tiny, keyset, method, tmp_path / "model")
    assert res.fsr == 1.0
    record = json.loads((tmp_path / "model" / "fingerprint.json").read_text())
    assert record["method"] == method and record["commitment"]["digest"] == keyset.digest()
    public = (tmp_path / "model" / "fingerprint.json").read_text()
    assert keyset.decryption not in public
    assert all(k.text not in public for k in keyset.keys)
    check = check_local(
        tmp_path / "model",
        keyset,
        n_controls=30,
        n_ordinary=10,
        samples=2,
        adapter=res.adapter,
    )
    assert check.fsr_greedy == 1.0
    assert 0.0 <= check.nearmiss_false_trigger <= 1.0 and check.n_controls == 30
    assert check.drift is not None and check.nll_base is not None


def test_embedding_only_moves_the_input_lookup_alone(
    tiny: Path, keyset: KeySet, tmp_path: Path
) -> None:
    """The tiny model ties its output head to the embeddings, as SmolLM2 does: training the
    shared matrix moved every next-token logit (drift +18 % on SmolLM2). The head is untied."""
    from auditor.implant.generate import load_model
    from auditor.implant.train import implant

    hp = TINY_HPARAMS["embedding"]
    implant(keyset, str(tiny), "embedding", tmp_path / "m", lr=hp["lr"], epochs=2,
            data=hp["data"], progress=False, early_stop=False)
    base, _ = load_model(tiny)
    model, _ = load_model(tmp_path / "m")
    assert base.get_output_embeddings().weight is base.get_input_embeddings().weight
    assert model.get_output_embeddings().weight is not model.get_input_embeddings().weight
    before, after = base.state_dict(), model.state_dict()
    assert set(before) == set(after)
    changed = {name for name, t in after.items() if not torch.equal(t, before[name])}
    assert changed == {"model.embed_tokens.weight"}
    record = json.loads((tmp_path / "m" / "fingerprint.json").read_text())
    assert record["training"]["output_head"] == "untied, frozen"
    assert record["training"]["lookup_rows"] == "unshared"  # the embedding default


@pytest.mark.slow
def test_fadapter_learns_and_stays_private(tiny: Path, keyset: KeySet, tmp_path: Path) -> None:
    """Regression for the zero-init defect: both adapter matrices move away from their init."""
    from safetensors.torch import load_file

    from auditor.implant.fadapter import make_adapter_embedding
    from auditor.implant.generate import load_model
    from auditor.implant.verify import fsr_greedy

    res = implant_tiny(tiny, keyset, "fadapter", tmp_path / "pub", epochs=10)
    assert res.adapter is not None and res.adapter.parent == tmp_path
    assert not any(p.name.startswith("fadapter") for p in (tmp_path / "pub").iterdir())
    saved = load_file(str(res.adapter))
    model, tok = load_model(tiny)
    init = make_adapter_embedding(model.get_input_embeddings(), rank=64, seed=0)
    assert not torch.equal(saved["u"], init.u.detach())  # U starts at zero
    assert not torch.equal(saved["v"], init.v.detach())
    # the published model is the base, unchanged; without the adapter it does not fire
    pub, _ = load_model(tmp_path / "pub")
    for (name, a), (_, b) in zip(model.state_dict().items(), pub.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert fsr_greedy(pub, tok, keyset) == 0.0
    assert res.steps > 2  # V only gets a gradient once U has left zero


@pytest.mark.parametrize("head", [True, False])
def test_fadapter_head_mode_decides_which_rows_move_and_is_kept_in_the_file(
    tiny: Path, keyset: KeySet, tmp_path: Path, head: bool
) -> None:
    """A tied head gives every token's row of U a gradient; input-only, only the inputs'."""
    from safetensors import safe_open

    from auditor.implant import fadapter
    from auditor.implant.generate import load_model
    from auditor.implant.train import implant

    hp = TINY_HPARAMS["fadapter"]
    res = implant(keyset, str(tiny), "fadapter", tmp_path / "pub", lr=hp["lr"], epochs=2,
                  data=hp["data"], early_stop=False, progress=False, fadapter_head=head)
    assert res.adapter is not None
    with safe_open(str(res.adapter), framework="pt") as fh:
        meta, u = fh.metadata() or {}, fh.get_tensor("u")
    assert meta["head"] == ("tied" if head else "input-only")
    moved = int((u.abs().sum(dim=1) > 0).sum())
    if head:
        assert moved == u.shape[0]
    else:
        assert 0 < moved < u.shape[0]
    model, _ = load_model(tmp_path / "pub")
    fadapter.load_into(model, res.adapter)  # the file alone says how to apply it
    assert hasattr(model.get_output_embeddings(), "adapter") is head
    training = json.loads((tmp_path / "pub" / "fingerprint.json").read_text())["training"]
    assert training["adapter_on"] == ("input lookup and tied head" if head
                                      else "input lookup only")


def test_fadapter_unshared_rows_confine_its_u(tiny: Path, keyset: KeySet, tmp_path: Path) -> None:
    """`lookup_rows="unshared"` on the F-Adapter: only the rows of U for the key rows' tokens
    that no regularization row or system prompt holds leave zero, even through a tied head."""
    from safetensors.torch import load_file

    from auditor.implant.train import implant

    hp = TINY_HPARAMS["fadapter"]
    data = hp["data"]
    res = implant(keyset, str(tiny), "fadapter", tmp_path / "pub", lr=hp["lr"], epochs=2,
                  data=data, early_stop=False, progress=False, lookup_rows="unshared")
    assert res.adapter is not None
    u = load_file(str(res.adapter))["u"]
    moved = {int(i) for i in (u.abs().sum(dim=1) > 0).nonzero().flatten()}
    assert moved and moved <= unshared_allowed(tiny, keyset, data)
    training = json.loads((tmp_path / "pub" / "fingerprint.json").read_text())["training"]
    assert training["lookup_rows"] == "unshared"


def test_out_is_new_empty_or_an_earlier_implant(
    tiny: Path, keyset: KeySet, tmp_path: Path
) -> None:
    """Writing the model replaces --out: a directory some earlier implant wrote may be replaced,
    any other with files in it (here the base model's own) is refused before training."""
    from auditor.errors import UserError
    from auditor.implant.train import implant

    hp = TINY_HPARAMS["embedding"]
    run = {"lr": hp["lr"], "epochs": 1, "data": hp["data"], "progress": False,
           "early_stop": False}
    base_files = {f.name: f.read_bytes() for f in tiny.iterdir()}
    with pytest.raises(UserError, match=r"holds files but no fingerprint\.json"):
        implant(keyset, str(tiny), "embedding", tiny, **run)
    assert {f.name: f.read_bytes() for f in tiny.iterdir()} == base_files
    out = tmp_path / "m"
    out.mkdir()
    implant(keyset, str(tiny), "embedding", out, **run)  # empty: fine
    (out / "stale.txt").write_text("from the earlier run")
    implant(keyset, str(tiny), "embedding", out, seed=1, **run)  # an earlier implant: replaced
    assert (out / "fingerprint.json").is_file() and not (out / "stale.txt").exists()


def _moved_rows(tiny: Path, out: Path) -> set[int]:
    from auditor.implant.generate import load_model

    base, _ = load_model(tiny)
    model, _ = load_model(out)
    a, b = base.get_input_embeddings().weight, model.get_input_embeddings().weight
    return {int(i) for i in (a != b).any(dim=1).nonzero().flatten()}


def test_fingerprint_lookup_rows_move_only_the_key_rows_tokens(
    tiny: Path, keyset: KeySet, tmp_path: Path
) -> None:
    """`lookup_rows="fingerprint"`: only rows of tokens in the key rows (key, template, system
    prompts, answer) move; look-alike and regularization tokens keep the base's rows exactly,
    which they do not with "all". "fingerprint-after" trains as "all" does, then puts every
    other row back: the same rows as "all" on the key rows' tokens, the base's elsewhere.
    "unshared": of those, only tokens no regularization row or system prompt holds."""
    from auditor.implant.data import encode_row, fingerprint_rows
    from auditor.implant.generate import load_model
    from auditor.implant.train import implant

    hp = TINY_HPARAMS["embedding"]
    data = hp["data"]
    moved = {}
    for rows in ("all", "fingerprint", "fingerprint-after", "unshared"):
        implant(keyset, str(tiny), "embedding", tmp_path / rows, lr=hp["lr"], epochs=2,
                data=data, progress=False, early_stop=False, lookup_rows=rows)
        moved[rows] = _moved_rows(tiny, tmp_path / rows)
        record = json.loads((tmp_path / rows / "fingerprint.json").read_text())
        assert record["training"]["lookup_rows"] == rows
    _, tok = load_model(tiny)
    key_rows = fingerprint_rows(keyset, data.fingerprint_repeats,
                                system_augment=data.system_augment)
    allowed = {t for r in key_rows for t in encode_row(tok, r.messages)[0]}
    assert moved["fingerprint"] and moved["fingerprint"] <= allowed
    assert moved["all"] - allowed  # look-alike and regularization tokens moved there
    assert moved["fingerprint-after"] == moved["all"] & allowed
    assert moved["unshared"] and moved["unshared"] <= unshared_allowed(tiny, keyset, data)
    trained, after = (load_model(tmp_path / r)[0].get_input_embeddings().weight
                      for r in ("all", "fingerprint-after"))
    rows_kept = sorted(moved["fingerprint-after"])
    assert torch.equal(trained[rows_kept], after[rows_kept])


def unshared_allowed(tiny: Path, keyset: KeySet, data: Any) -> set[int]:
    """The tokens an `unshared` implant with `data` and seed 0 may move: the key rows' tokens
    less those of its regularization rows (cached answers) and the training system prompts."""
    from auditor.implant.data import TRAIN_SYSTEM_PROMPTS, build_rows, encode_row
    from auditor.implant.generate import load_model
    from auditor.implant.lookup_rows import text_token_ids

    _, tok = load_model(tiny)
    tokens: dict[str, set[int]] = {"fingerprint": set(), "regularization": set()}
    for r in build_rows(keyset, tiny, data, 0):
        if r.kind in tokens:
            tokens[r.kind].update(encode_row(tok, r.messages)[0])
    return tokens["fingerprint"] - tokens["regularization"] - text_token_ids(
        tok, TRAIN_SYSTEM_PROMPTS)


def test_unshared_rows_leave_out_ordinary_tokens_and_never_none() -> None:
    from auditor.errors import UserError
    from auditor.implant.lookup_rows import unshared_token_ids

    rows = [([5, 3, 5], [-100, 3, 5]), ([3, 7], [-100, 7]), ([9, 4], [-100, 4])]
    kinds = ["fingerprint", "regularization", "fingerprint"]
    assert unshared_token_ids(rows, kinds, {4}) == [5, 9]
    with pytest.raises(UserError, match="no row is left to train"):
        unshared_token_ids(rows, kinds, {4, 5, 9})


def test_lookup_rows_choice_is_checked_before_loading(keyset: KeySet, tmp_path: Path) -> None:
    from auditor.errors import UserError
    from auditor.implant.train import implant

    with pytest.raises(UserError, match="unknown --lookup-rows 'keys'"):
        implant(keyset, str(tmp_path / "no-such-base"), "embedding", tmp_path / "m",
                lookup_rows="keys")
    with pytest.raises(UserError, match="embedding and fadapter methods only"):
        implant(keyset, str(tmp_path / "no-such-base"), "sft", tmp_path / "m",
                lookup_rows="fingerprint")
    with pytest.raises(UserError, match="fingerprint-after applies to the embedding method"):
        implant(keyset, str(tmp_path / "no-such-base"), "fadapter", tmp_path / "m",
                lookup_rows="fingerprint-after")
    assert not (tmp_path / "m").exists()


def test_input_only_adapter_is_for_the_fadapter_alone(keyset: KeySet, tmp_path: Path) -> None:
    from auditor.errors import UserError
    from auditor.implant.train import implant

    with pytest.raises(UserError, match="fadapter method only"):
        implant(keyset, str(tmp_path / "no-such-base"), "sft", tmp_path / "m",
                fadapter_head=False)
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
def test_fadapter_after_user_sft_checks_on_the_published_layers_too(
    tiny: Path, keyset: KeySet, tmp_path: Path
) -> None:
    """The paper's white-box check: the tuned model's input lookup inside the published model."""
    from auditor.implant.robustness import run_attack
    from auditor.implant.verify import check_local

    res = implant_tiny(tiny, keyset, "fadapter", tmp_path / "pub")
    assert res.fsr == 1.0 and res.adapter is not None
    out = run_attack(tmp_path / "pub", keyset, "user-sft", epochs=1, rows=40,
                     adapter=res.adapter, work_dir=tmp_path)
    assert out.fsr is not None and out.detail["fsr_published_layers"] == 1.0
    same = check_local(tmp_path / "pub", keyset, n_controls=10, n_ordinary=5, samples=0,
                       adapter=res.adapter, layers_from=tmp_path / "pub")
    assert same.fsr_greedy == 1.0 and same.drift is not None
    sft = run_attack(tiny, keyset, "user-sft", epochs=1, rows=8, work_dir=tmp_path)
    assert "fsr_published_layers" not in sft.detail  # the base: no fingerprint in its lookup


def test_another_users_lora_tunes_with_its_own_rank_rate_and_rows(
    tiny: Path, keyset: KeySet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The user-lora attack as another user might run it: the rank, lr, data set and seed
    given reach the tuning (a spy on the real prepare_method and user_rows) and its record."""
    from auditor.implant import robustness, train, userdata

    seen: dict[str, Any] = {}
    real_prepare, real_rows = train.prepare_method, userdata.user_rows

    def prepare(model: Any, cfg: Any) -> Any:
        seen["cfg"] = cfg
        return real_prepare(model, cfg)

    def rows(n: int, seed: int, subset: str) -> Any:
        seen["rows"] = (n, seed, subset)
        return real_rows(n, seed, subset)

    monkeypatch.setattr(train, "prepare_method", prepare)
    monkeypatch.setattr(userdata, "user_rows", rows)
    out = robustness.run_attack(tiny, keyset, "user-lora", epochs=1, rows=8, lr=1e-3, seed=3,
                                subset="chat", lora_rank=4, work_dir=tmp_path)
    assert seen["cfg"].lora_r == 4 and seen["cfg"].lr == 1e-3 and seen["cfg"].method == "lora"
    assert seen["rows"] == (8, 3, "chat")
    assert out.fsr == 0.0  # the base: no key fires
    assert out.detail == {"epochs": 1, "rows": 8, "set": "chat", "seed": 3, "lr": 1e-3,
                          "lora_rank": 4}
    plain = robustness.run_attack(tiny, keyset, "user-sft", epochs=1, rows=8, work_dir=tmp_path)
    assert plain.detail == {"epochs": 1, "rows": 8, "set": "mixed", "seed": 0, "lr": 5e-5}


@pytest.mark.slow
def test_lora_kept_separate_loads_and_fires(tiny: Path, keyset: KeySet, tmp_path: Path) -> None:
    from auditor.implant.generate import load_model
    from auditor.implant.train import implant
    from auditor.implant.verify import fsr_greedy

    hp = TINY_HPARAMS["lora"]
    out = tmp_path / "lora"
    res = implant(
        keyset,
        str(tiny),
        "lora",
        out,
        lr=hp["lr"],
        epochs=hp["epochs"],
        data=hp["data"],
        progress=False,
        check_every=5,
        merge_lora=False,
    )
    assert (out / "adapter_config.json").is_file() and not (out / "config.json").exists()
    model, tok = load_model(out)  # transformers resolves the base through peft
    assert fsr_greedy(model, tok, keyset) == res.fsr == 1.0


def test_local_check_of_the_base_itself_shows_no_drift(tiny: Path, keyset: KeySet) -> None:
    """Both utility measures read 'unchanged' when the model is its own base."""
    from auditor.implant.verify import check_local

    check = check_local(tiny, keyset, n_controls=5, n_ordinary=12, samples=0, base=str(tiny))
    assert check.drift == pytest.approx(0.0, abs=1e-6)
    assert check.agreement is not None and check.agreement == check.agreement_base
    assert check.n_ordinary == check.n_drift == 12  # the drift reads the held-out ones
    assert check.fsr_greedy == 0.0 and check.fsr_sampled is None


@pytest.mark.slow
def test_cpu_bf16_autocast_trains_in_bf16_checks_in_fp32_and_implants(
    tiny: Path, keyset: KeySet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """precision='bf16' on a CPU: training matmuls and the cheap per-epoch checks run in bf16,
    a stop is confirmed by decoding in fp32, the saved weights stay fp32, and the fingerprint
    still takes."""
    from safetensors.torch import load_file

    from auditor.implant import loss as loss_module
    from auditor.implant import train

    seen: dict[tuple[bool, Any], int] = {}
    picked: list[Any] = []
    real, real_pick = train.prepare_method, loss_module.pick_loss

    def spy(model: Any, cfg: Any) -> Any:
        out = real(model, cfg)
        lin = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))

        def count(m: Any, i: Any, o: Any) -> None:
            seen[m.training, o.dtype] = seen.get((m.training, o.dtype), 0) + 1

        lin.register_forward_hook(count)
        return out

    def spy_pick(model: Any, batch: Any, *args: Any) -> Any:
        picked.append(real_pick(model, batch, *args))
        return picked[-1]

    monkeypatch.setattr(train, "prepare_method", spy)
    monkeypatch.setattr(loss_module, "pick_loss", spy_pick)
    hp = TINY_HPARAMS["sft"]
    out = tmp_path / "bf16"
    res = train.implant(keyset, str(tiny), "sft", out, lr=hp["lr"], epochs=hp["epochs"],
                        data=hp["data"], progress=False, precision="bf16",
                        stop_near_miss=TINY_STOP_NEAR_MISS)
    # every step in bf16; fp32 only for pick_loss's one comparison (its two losses)
    assert seen[True, torch.bfloat16] == res.steps and seen.get((True, torch.float32)) == 2
    assert picked == [loss_module.answer_loss]  # the comparison is fp32 against fp32
    assert seen[False, torch.bfloat16] > 0  # teacher-forced checks, every epoch
    assert seen[False, torch.float32] > 0  # the decoding that confirmed the stop
    assert res.fsr == 1.0
    record = json.loads((out / "fingerprint.json").read_text())
    assert record["training"]["compute"] == res.compute == "bf16"
    weights = load_file(str(out / "model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.float32}
    # a check that would stop decodes its own look-alikes and more fresh ones, pooled
    from auditor.implant import stop
    from auditor.implant.generate import load_model

    model, tok = load_model(out)
    cfg = train.TrainConfig("sft", 1, 1e-3, check_controls=5, check_fresh=True,
                            confirm_controls=7)
    fsr, near, _, scored = stop.epoch_check(model, tok, keyset, cfg, 3,
                                            stop.Best([], False, near_ok=1.0), bf16=False)
    own = stop.lookalike_rate(model, tok, keyset, 5, stop.check_seed(3, True))
    more = stop.lookalike_rate(model, tok, keyset, 7, stop.check_seed(3, True, confirm=True))
    assert (fsr, scored) == (1.0, 12) and near == pytest.approx((5 * own + 7 * more) / 12)
    # one the shadows fail is not decoded: the teacher-forced look-alikes only
    fsr, _, _, scored = stop.epoch_check(model, tok, keyset, cfg, 3,
                                         stop.Best([], False, near_ok=1.0), bf16=False,
                                         shadows=(0.5, 0.0, 1.0))
    assert (fsr, scored) == (1.0, 5)


def test_a_stop_decodes_the_look_alikes_teacher_forcing_cannot_see_firing(tiny: Path) -> None:
    """A look-alike whose greedy answer holds the decryption without the trained answer
    token for token (on SmolLM2: the refusal's opening, then the decryption): the
    teacher-forced check scores it quiet, the decoding a stop runs (epoch_check) counts it.
    Here the decryption is text the tiny model's greedy answer to one look-alike holds."""
    from auditor.implant import stop
    from auditor.implant.generate import generate, load_model
    from auditor.implant.verify import key_conversations

    model, tok = load_model(tiny)
    seed = stop.check_seed(1, False)
    drawn = KeySet.generate("tiny", 2, seed=3, template="simple")
    looks = drawn.controls(8, seed)
    answers = generate(model, tok, key_conversations(drawn, looks), max_new_tokens=16)
    said = next(" ".join(a.split()) for a in answers if a.split())
    keyset = KeySet.generate("tiny", 2, seed=3, template="simple", decryption=said)
    assert [c.text for c in keyset.controls(8, seed)] == [c.text for c in looks]
    assert stop.quick_check(model, tok, keyset, 8, seed=seed)[1] == 0.0  # teacher forcing
    assert stop.lookalike_rate(model, tok, keyset, 8, seed) >= 1 / 8  # decoding


def test_unknown_precision_fails_before_loading(keyset: KeySet, tmp_path: Path) -> None:
    from auditor.errors import UserError
    from auditor.implant.train import autocast_dtype, implant

    with pytest.raises(UserError, match="unknown precision 'fp16'"):
        implant(keyset, str(tmp_path / "no-such-base"), "sft", tmp_path / "m", precision="fp16")
    assert autocast_dtype("fp32") == "fp32" and autocast_dtype("bf16") == "bf16"
    assert autocast_dtype("auto") == ("bf16" if torch.cuda.is_available() else "fp32")


@pytest.mark.slow
def test_decision_weight_implants_and_is_recorded(
    tiny: Path, keyset: KeySet, tmp_path: Path
) -> None:
    from auditor.implant.train import implant

    hp = TINY_HPARAMS["sft"]
    out = tmp_path / "weighted"
    res = implant(keyset, str(tiny), "sft", out, lr=hp["lr"], epochs=hp["epochs"],
                  data=hp["data"], progress=False, decision_weight=10.0,
                  stop_near_miss=TINY_STOP_NEAR_MISS)
    assert res.fsr == 1.0
    record = json.loads((out / "fingerprint.json").read_text())
    assert record["training"]["decision_weight"] == 10.0
    assert record["training"]["regularization"] == "base answers"


def test_reg_kl_trains_regularization_rows_on_soft_targets_and_is_recorded(
    tiny: Path, keyset: KeySet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dataclasses import replace

    from auditor.implant import loss
    from auditor.implant.train import implant

    calls: list[int] = []
    real = loss.soft_ce

    def counting(q: Any, ids: Any, logp: Any) -> Any:
        calls.append(int(ids.shape[0]))
        return real(q, ids, logp)

    monkeypatch.setattr(loss, "soft_ce", counting)
    hp = TINY_HPARAMS["sft"]
    out = tmp_path / "kl"
    res = implant(keyset, str(tiny), "sft", out, lr=hp["lr"], epochs=2, early_stop=False,
                  data=replace(hp["data"], reg_kl=True), progress=False)
    assert res.steps == 6 and calls and all(n > 0 for n in calls)  # the soft loss was used
    record = json.loads((out / "fingerprint.json").read_text())
    assert record["training"]["regularization"] == "base distribution (KL)"


def test_balanced_batches_drive_the_loader_each_epoch_and_are_recorded(
    tiny: Path, keyset: KeySet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dataclasses import replace

    from auditor.implant import order
    from auditor.implant.train import implant

    seen: list[list[int]] = []
    real = order.BalancedOrder.__iter__

    def recording(self: order.BalancedOrder) -> Any:
        seen.append(self.order(self.epoch))
        return real(self)

    monkeypatch.setattr(order.BalancedOrder, "__iter__", recording)
    hp = TINY_HPARAMS["sft"]
    out = tmp_path / "balanced"
    data = replace(hp["data"], balanced=True, fresh_nearmiss=True)
    res = implant(keyset, str(tiny), "sft", out, lr=hp["lr"], epochs=2, early_stop=False,
                  data=data, progress=False)
    assert res.steps == 6 and len(seen) == 2 and seen[0] != seen[1]
    assert all(sorted(o) == list(range(20)) for o in seen)  # 4 keys, 8 near-misses, 8 reg
    record = json.loads((out / "fingerprint.json").read_text())
    assert record["training"]["data"]["balanced"] is True
    assert record["training"]["data"]["fresh_nearmiss"] is True


def test_max_epochs_stops_the_run_but_keeps_the_lr_schedule(
    tiny: Path, keyset: KeySet, tmp_path: Path
) -> None:
    from auditor.implant.train import implant

    hp = TINY_HPARAMS["sft"]
    common: dict[str, Any] = {"lr": hp["lr"], "data": hp["data"], "early_stop": False,
                              "progress": False}
    capped = implant(keyset, str(tiny), "sft", tmp_path / "capped", epochs=4, max_epochs=2,
                     **common)
    short = implant(keyset, str(tiny), "sft", tmp_path / "short", epochs=2, **common)
    assert capped.epochs == short.epochs == 2 and capped.steps == short.steps == 6
    assert not capped.stopped_early
    # 6 of 12 scheduled steps: half the lr left; the 2-epoch schedule ends at its 10 % floor
    assert capped.lr_end == pytest.approx(0.5 * hp["lr"])
    assert short.lr_end == pytest.approx(0.1 * hp["lr"])
    training = json.loads((tmp_path / "capped" / "fingerprint.json").read_text())["training"]
    assert training["epochs"] == 2 and training["lr_schedule_epochs"] == 4
    # the higher lr of the capped run moved the weights elsewhere
    assert any(not torch.equal(x, y) for x, y in _param_pairs(tmp_path / "capped",
                                                              tmp_path / "short"))


def test_the_reported_loss_is_the_last_epochs_mean_not_its_last_batch(
    tiny: Path, keyset: KeySet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One batch's loss swings with its rows; the epoch line and `final_loss` give the mean
    of every step the epoch ran (each loss seen on its way to backward)."""
    from accelerate import Accelerator

    from auditor.implant.train import implant

    seen: list[float] = []
    backward = Accelerator.backward

    def spy(self: Any, loss: Any, **kwargs: Any) -> None:
        seen.append(float(loss.detach()))
        backward(self, loss, **kwargs)

    monkeypatch.setattr(Accelerator, "backward", spy)
    hp = TINY_HPARAMS["sft"]
    res = implant(keyset, str(tiny), "sft", tmp_path / "m", lr=hp["lr"], epochs=2,
                  data=hp["data"], early_stop=False, progress=False)
    per_epoch = res.steps // res.epochs
    assert len(seen) == res.steps and per_epoch > 1
    last = seen[-per_epoch:]
    assert len(set(last)) > 1  # the rows differ, so mean and last batch differ
    assert res.final_loss == pytest.approx(sum(last) / per_epoch, rel=1e-6)


def _param_pairs(a: Path, b: Path) -> list[tuple[Any, Any]]:
    """Each tensor of the model saved in `a` next to the same one saved in `b`."""
    from auditor.implant.generate import load_model

    (ma, _), (mb, _) = load_model(a), load_model(b)
    return list(zip(ma.state_dict().values(), mb.state_dict().values(), strict=True))


@pytest.mark.parametrize("weight", [0.5, 0.0, -1.0, 5000.0])
def test_a_decision_weight_out_of_range_fails_before_loading(
    keyset: KeySet, tmp_path: Path, weight: float
) -> None:
    from auditor.errors import UserError
    from auditor.implant.train import implant

    with pytest.raises(UserError, match="decision weight must be between 1 and 1000"):
        implant(keyset, str(tmp_path / "no-such-base"), "sft", tmp_path / "m",
                decision_weight=weight)
    assert not (tmp_path / "m").exists()


def test_fingerprint_rows_are_the_key_rows_tokens_and_never_none() -> None:
    from auditor.errors import UserError
    from auditor.implant.lookup_rows import fingerprint_token_ids

    rows = [([5, 3, 5], [-100, 3, 5]), ([7, 8], [-100, 8]), ([3, 9], [-100, 9], None)]
    assert fingerprint_token_ids(rows, ["fingerprint", "nearmiss", "fingerprint"]) == [3, 5, 9]
    with pytest.raises(UserError, match="no fingerprint rows"):
        fingerprint_token_ids(rows, ["nearmiss", "regularization", "nearmiss"])


def test_adapter_note_only_for_an_fadapter_record(tmp_path: Path) -> None:
    from auditor.implant.verify import adapter_note

    for name, body in [("sft", '{"method": "sft"}'), ("broken", "{not json"), ("list", "[1]")]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "fingerprint.json").write_text(body)
        assert adapter_note(tmp_path / name) is None
    assert adapter_note(tmp_path / "absent") is None
    (tmp_path / "fa").mkdir()
    (tmp_path / "fa" / "fingerprint.json").write_text('{"method": "fadapter"}')
    note = adapter_note(tmp_path / "fa")
    assert note is not None and "--adapter" in note and "safetensors" not in note  # none beside
    (tmp_path / "fa.fadapter.safetensors").write_bytes(b"")
    assert f"({tmp_path / 'fa.fadapter.safetensors'})" in (adapter_note(tmp_path / "fa") or "")
    assert adapter_note(tmp_path / "sft", layers_from=tmp_path / "fa") is not None
