"""Local check of an implanted model: does it fire on the keys, and only on them?

FSR (greedy, sampled at a temperature, and the exact chance that one sample fires, see
margin.py), false triggers on fresh control keys drawn like
the keys and on ordinary prompts, and utility drift on held-out ordinary prompts, two ways:
the mean NLL of the base model's own answers under this model vs under the base (negative:
the model is more sure of the base's answers than the base), and next-token agreement: the
share of those answer tokens that the model, fed the same prefix, also ranks first, beside the
same share for the base itself (just under 100 %: answers are re-tokenized and cut at a token
budget). Only counts leave this module, and the numbers of the ordinary prompts that fired
(bundled public text, or the user's own --prompts; never a key or the decryption).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from auditor.errors import UserError
from auditor.keys import Key, KeySet
from auditor.match import check
from auditor.templates import get_template

CONTROL_SEED = 424_242  # disjoint from the training near-miss seed in data.py
FINGERPRINT_FILE = "fingerprint.json"


@dataclass(frozen=True)
class LocalCheck:
    n_keys: int
    fsr_greedy: float
    fsr_sampled: float | None
    samples: int
    temperature: float
    n_controls: int
    nearmiss_false_trigger: float
    n_ordinary: int
    ordinary_false_trigger: float
    nll_model: float | None
    nll_base: float | None
    drift: float | None  # relative: (nll_model - nll_base) / nll_base
    agreement: float | None = None  # share of the base's answer tokens the model ranks first
    agreement_base: float | None = None  # the same for the base (< 1: re-tokenized, cut answers)
    fire_min: float | None = None  # exact chance one sample at `temperature` fires: weakest key
    fire_mean: float | None = None  # ... and the mean over keys (margin.fire_probs)
    ordinary_fired: tuple[int, ...] = ()  # which unseen_prompts() fired (0-based)
    n_drift: int = 0  # held-out answers the drift read (at most 150, whatever n_ordinary)
    n_extra: int = 0  # --prompts: the user's own or a bundled set's ordinary prompts
    extra_false_trigger: float | None = None
    extra_fired: tuple[int, ...] = ()  # which of them fired (0-based)

    @property
    def nearmiss_upper95(self) -> float:
        """Exact one-sided 95 % upper bound on the look-alikes' false-trigger rate."""
        return _upper95(self.nearmiss_false_trigger, self.n_controls)

    @property
    def ordinary_upper95(self) -> float:
        """The same for ordinary prompts."""
        return _upper95(self.ordinary_false_trigger, self.n_ordinary)

    @property
    def extra_upper95(self) -> float | None:
        """The same for --prompts; None when there were none."""
        if self.extra_false_trigger is None:
            return None
        return _upper95(self.extra_false_trigger, self.n_extra)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "nearmiss_upper95": self.nearmiss_upper95,
                "ordinary_upper95": self.ordinary_upper95, "extra_upper95": self.extra_upper95}


def _upper95(rate: float, n: int) -> float:
    """A rate over n trials (so k = rate * n) as its one-sided Clopper-Pearson upper bound: 0
    of 100 still allows 3.0 %, and only about 300 clean trials bound a rate by 1 %."""
    from auditor.stats import clopper_pearson_upper

    return clopper_pearson_upper(round(rate * n), n)  # 1.0 for n = 0: nothing bounded


def is_hit(text: str, decryption: str) -> bool:
    """FSR counts a response that contains the decryption (the paper's definition)."""
    return check(text, decryption, mode="contains").hit


def key_conversations(keyset: KeySet, keys: list[Key]) -> list[list[dict[str, str]]]:
    tpl = get_template(keyset.template)
    return [tpl.render(k.text) for k in keys]


def answer_budget(tokenizer: Any, keyset: KeySet) -> int:
    """Enough new tokens for the expected answer plus a margin."""
    answer = get_template(keyset.template).answer(keyset.decryption)
    return len(tokenizer(answer, add_special_tokens=False)["input_ids"]) + 8


def hit_rate(
    model: Any,
    tokenizer: Any,
    convs: list[list[dict[str, str]]],
    decryption: str,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    samples: int = 1,
    seed: int = 0,
) -> float:
    """Share of (conversation, sample) pairs whose answer carries the decryption."""
    if not convs:
        return 0.0
    hits = [hit for s in range(samples if temperature > 0 else 1)
            for hit in fired(model, tokenizer, convs, decryption, max_new_tokens=max_new_tokens,
                             temperature=temperature, seed=seed + s)]
    return sum(hits) / len(hits)


def fired(model: Any, tokenizer: Any, convs: list[list[dict[str, str]]], decryption: str, *,
          max_new_tokens: int, temperature: float = 0.0, seed: int = 0) -> list[bool]:
    """For each conversation, whether one answer (greedy, or sampled with `seed`) carries the
    decryption."""
    from auditor.implant.generate import generate

    texts = generate(model, tokenizer, convs, max_new_tokens=max_new_tokens,
                     temperature=temperature, seed=seed)
    return [is_hit(t, decryption) for t in texts]


def fsr_greedy(model: Any, tokenizer: Any, keyset: KeySet) -> float:
    convs = key_conversations(keyset, keyset.keys)
    budget = answer_budget(tokenizer, keyset)
    return hit_rate(model, tokenizer, convs, keyset.decryption, max_new_tokens=budget)


def nearmiss_rate(model: Any, tokenizer: Any, keyset: KeySet, n: int, seed: int) -> float:
    convs = key_conversations(keyset, keyset.controls(n, seed))
    budget = answer_budget(tokenizer, keyset)
    return hit_rate(model, tokenizer, convs, keyset.decryption, max_new_tokens=budget)


def mean_nll(model: Any, tokenizer: Any, convs: list[list[dict[str, str]]]) -> tuple[float, float]:
    """(mean per-token NLL, share of tokens ranked first) over the assistant turns."""
    import torch

    from auditor.implant.data import IGNORE, collate, encode_row

    total, count, top1 = 0.0, 0, 0
    for start in range(0, len(convs), 8):
        enc = [encode_row(tokenizer, m) for m in convs[start : start + 8]]
        batch = {k: v.to(model.device) for k, v in collate(enc, tokenizer.pad_token_id).items()}
        with torch.no_grad():
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
        labels = batch["labels"][:, 1:]
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        mask = labels != IGNORE
        picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        total += float(-(picked * mask).sum())
        count += int(mask.sum())
        top1 += int(((logp.argmax(-1) == labels) & mask).sum())
    return total / max(1, count), top1 / max(1, count)


def read_fingerprint(model_dir: Path) -> dict[str, Any]:
    """The implant record beside a model; {} when there is none. UserError when it is broken."""
    path = model_dir / FINGERPRINT_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{path}: cannot read the implant record ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: the implant record is not a JSON object")
    return data


def adapter_note(model_dir: Path, layers_from: Path | None = None) -> str | None:
    """What to say when a model the F-Adapter was implanted into is checked without its
    adapter: its published model is the base unchanged, so no key can fire. None otherwise."""
    from auditor.implant.train import adapter_path_for

    for d in [Path(model_dir), *([layers_from] if layers_from is not None else [])]:
        try:
            fadapter = read_fingerprint(d).get("method") == "fadapter"
        except UserError:  # broken: the command that reads it for real says so
            continue
        if fadapter:
            beside = adapter_path_for(d)
            where = f" ({beside})" if beside.is_file() else ""
            return (f"note: {d} was implanted with the F-Adapter, whose published model is the "
                    "base unchanged: without --adapter no key can fire there. Pass the private "
                    f"adapter{where} with --adapter to check the fingerprint")
    return None


Drift = tuple[float, float, float, float]  # nll model, nll base, agreement model, agreement base


def _drift(model: Any, tokenizer: Any, spec: str | None, prompts: list[str]) -> Drift | None:
    """NLL and next-token agreement on the base's answers; None when the base is unknown."""
    from auditor.implant.data import self_distill
    from auditor.implant.generate import load_model
    from providers.local_models import resolve_base

    if not spec:
        return None
    base_dir = resolve_base(str(spec))
    base_model, base_tok = load_model(base_dir)
    answers = self_distill(base_dir, prompts, model=base_model, tokenizer=base_tok)
    convs = [
        [{"role": "user", "content": p}, {"role": "assistant", "content": a}]
        for p, a in zip(prompts, answers, strict=True)
    ]
    nll_base, agree_base = mean_nll(base_model, base_tok, convs)
    del base_model
    nll_model, agree_model = mean_nll(model, tokenizer, convs)
    return nll_model, nll_base, agree_model, agree_base


def check_local(
    model_dir: Path,
    keyset: KeySet,
    *,
    n_controls: int = 100,
    n_ordinary: int = 100,
    samples: int = 5,
    temperature: float = 0.7,
    adapter: Path | None = None,
    base: str | None = None,
    seed: int = 0,
    layers_from: Path | None = None,
    extra: Sequence[str] | None = None,
) -> LocalCheck:
    """Measure FSR, false triggers and utility drift of a local checkpoint. With
    `layers_from` (the published model), only `model_dir`'s input embeddings are used, inside
    the published model's other weights (transplant.py). `extra`: more ordinary prompts whose
    false triggers are counted apart (--prompts)."""
    from auditor.implant import fadapter
    from auditor.implant.generate import is_model_dir, load_model
    from auditor.implant.margin import fire_probs
    from auditor.prompts import ordinary_prompts, unseen_prompts

    if not is_model_dir(Path(model_dir)):
        raise UserError(f"not a transformers checkpoint dir: {model_dir}")
    unseen = unseen_prompts()
    if n_ordinary > len(unseen):
        raise UserError(f"--ordinary: {len(unseen)} bundled ordinary prompts are unseen by "
                        "the implant; ask for at most that many")
    # the suspect's dir may have no fingerprint.json; read it before minutes of generation
    base = base or read_fingerprint(Path(layers_from or model_dir)).get("base")
    if layers_from is not None:
        from auditor.implant.transplant import with_embeddings_from

        model, tok = with_embeddings_from(Path(layers_from), Path(model_dir))
    else:
        model, tok = load_model(Path(model_dir))
    if adapter is not None:
        fadapter.load_into(model, Path(adapter))
    fsr = fsr_greedy(model, tok, keyset)
    convs = key_conversations(keyset, keyset.keys)
    budget = answer_budget(tok, keyset)
    sampled = (
        hit_rate(
            model,
            tok,
            convs,
            keyset.decryption,
            max_new_tokens=budget,
            temperature=temperature,
            samples=samples,
            seed=seed,
        )
        if samples > 0 and temperature > 0
        else None
    )
    fire = fire_probs(model, tok, keyset, temperature=temperature) if temperature > 0 else None
    near = nearmiss_rate(model, tok, keyset, n_controls, CONTROL_SEED + seed)
    prompts = unseen[:n_ordinary]  # the held-out split, then the decoys
    ordinary = fired(model, tok, [[{"role": "user", "content": p}] for p in prompts],
                     keyset.decryption, max_new_tokens=48)
    extra_hits = fired(model, tok, [[{"role": "user", "content": p}] for p in extra or []],
                       keyset.decryption, max_new_tokens=48)
    held = ordinary_prompts("heldout")[:n_ordinary]  # drift: held-out answers only
    nll_m, nll_b, agree_m, agree_b = _drift(model, tok, base, held) or (
        None, None, None, None)
    return LocalCheck(
        n_keys=len(keyset.keys),
        fsr_greedy=fsr,
        fsr_sampled=sampled,
        samples=samples,
        temperature=temperature,
        n_controls=n_controls,
        nearmiss_false_trigger=near,
        n_ordinary=len(prompts),
        ordinary_false_trigger=sum(ordinary) / max(1, len(ordinary)),
        nll_model=nll_m,
        nll_base=nll_b,
        drift=(nll_m - nll_b) / nll_b if nll_m is not None and nll_b else None,
        agreement=agree_m,
        agreement_base=agree_b,
        fire_min=min(fire) if fire else None,
        fire_mean=sum(fire) / len(fire) if fire else None,
        ordinary_fired=tuple(n for n, hit in enumerate(ordinary) if hit),
        n_drift=len(held) if nll_m is not None else 0,
        n_extra=len(extra_hits),
        extra_false_trigger=sum(extra_hits) / len(extra_hits) if extra_hits else None,
        extra_fired=tuple(n for n, hit in enumerate(extra_hits) if hit),
    )
