"""Exact chance that one sampled answer to a key reproduces the trained answer.

Sampling FSR at a temperature needs many generations and is noisy with few keys. Instead,
teacher-force each key's trained answer and multiply, token by token up to the end of the
decryption, the probability that temperature (and top-p) sampling picks that token: the exact
probability that one sample repeats the trained answer through the decryption. It is a lower
bound on the sample's chance to carry the decryption (other wordings may carry it too), costs
one forward pass per batch of keys, and is deterministic, so training can stop on it.
"""

from __future__ import annotations

import math
from typing import Any

from auditor.keys import KeySet
from auditor.templates import get_template


def sampling_probs(logits: Any, temperature: float, top_p: float = 1.0) -> Any:
    """Next-token distribution of temperature + nucleus sampling, as transformers applies it."""
    import torch

    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p >= 1.0:
        return probs
    sorted_p, order = probs.sort(dim=-1, descending=True)
    before = sorted_p.cumsum(dim=-1) - sorted_p  # mass ranked above each token
    keep_sorted = before < top_p  # the top token always stays
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    kept = probs * keep
    return kept / kept.sum(dim=-1, keepdim=True)


def _decryption_end(tokenizer: Any, answer_ids: list[int], decryption: str) -> int:
    """Number of answer tokens up to and including the one that completes the decryption."""
    for i in range(1, len(answer_ids) + 1):
        if decryption in tokenizer.decode(answer_ids[:i], skip_special_tokens=True):
            return i
    return len(answer_ids)


def fire_probs(
    model: Any, tokenizer: Any, keyset: KeySet, *, temperature: float = 0.7, top_p: float = 1.0
) -> list[float]:
    """Per key: probability that one sample at this temperature repeats the trained answer."""
    logps = fire_logprobs(model, tokenizer, keyset, temperature=temperature, top_p=top_p)
    return [math.exp(lp) for lp in logps]


def fire_logprobs(
    model: Any, tokenizer: Any, keyset: KeySet, *, temperature: float = 0.7, top_p: float = 1.0
) -> list[float]:
    """The natural log of `fire_probs` (-inf where top-p drops a token of the answer)."""
    import torch

    from auditor.implant.data import IGNORE, collate, encode_row

    if temperature <= 0:
        raise ValueError("the fire chance needs a sampling temperature > 0")
    tpl = get_template(keyset.template)
    answer = {"role": "assistant", "content": tpl.answer(keyset.decryption)}
    out: list[float] = []
    n = 0  # answer tokens through the decryption: the answer is tokenized apart, so one count
    for start in range(0, len(keyset.keys), 8):
        rows = [encode_row(tokenizer, [*tpl.render(k.text), answer])
                for k in keyset.keys[start : start + 8]]
        batch = {k: v.to(model.device) for k, v in collate(rows, tokenizer.pad_token_id).items()}
        with torch.no_grad():
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
        for i, (_, labels) in enumerate(rows):
            first = next(j for j, t in enumerate(labels) if t != IGNORE)
            target = labels[first:]
            n = n or _decryption_end(tokenizer, target, keyset.decryption)
            probs = sampling_probs(logits[i, first - 1 : first - 1 + n], temperature, top_p)
            picked = probs.gather(-1, torch.tensor(target[:n], device=probs.device)[:, None])
            out.append(float(picked.double().log().sum()))
    return out
