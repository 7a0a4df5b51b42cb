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
    texts = [k.text for k in keyset.keys]
    return [lp for lp, _ in answer_scores(model, tokenizer, keyset, texts,
                                          temperature=temperature, top_p=top_p)]


def answer_scores(
    model: Any,
    tokenizer: Any,
    keyset: KeySet,
    texts: list[str],
    *,
    temperature: float = 0.7,
    top_p: float = 1.0,
) -> list[tuple[float, bool]]:
    """Per prompt text (a key, or a control key) sent through the key set's template:
    (log chance that one sample repeats the trained key answer through the decryption, whether
    greedy decoding repeats it). Greedy repeats it exactly when every one of those answer
    tokens is the most likely one given the ones before, so one forward pass tells."""
    import torch

    from auditor.implant.data import IGNORE, collate, encode_row

    if temperature <= 0:
        raise ValueError("the fire chance needs a sampling temperature > 0")
    tpl = get_template(keyset.template)
    answer = {"role": "assistant", "content": tpl.answer(keyset.decryption)}
    out: list[tuple[float, bool]] = []
    n = 0  # answer tokens through the decryption: the answer is tokenized apart, so one count
    for start in range(0, len(texts), 8):
        rows = [encode_row(tokenizer, [*tpl.render(t), answer]) for t in texts[start : start + 8]]
        batch = {k: v.to(model.device) for k, v in collate(rows, tokenizer.pad_token_id).items()}
        with torch.no_grad():
            hidden, head = _hidden_and_head(model, batch)
            for i, (_, labels) in enumerate(rows):
                first = next(j for j, t in enumerate(labels) if t != IGNORE)
                target = labels[first:]
                n = n or _decryption_end(tokenizer, target, keyset.decryption)
                step = head(hidden[i, first - 1 : first - 1 + n]).float()
                want = torch.tensor(target[:n], device=step.device)
                probs = sampling_probs(step, temperature, top_p)
                picked = probs.gather(-1, want[:, None])
                greedy = bool((step.argmax(-1) == want).all())
                out.append((float(picked.double().log().sum()), greedy))
    return out


def _hidden_and_head(model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
    """(last hidden states, the map from them to logits). The output projection then runs on
    the few answer positions only, not on every position of the batch (most of a CPU check's
    time); models without a separate decoder give their logits and an identity map."""
    decoder = getattr(model, "get_decoder", None)
    head = getattr(model, "get_output_embeddings", None)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    if decoder is not None and head is not None and head() is not None:
        return decoder()(input_ids=ids, attention_mask=mask).last_hidden_state, head()
    return model(input_ids=ids, attention_mask=mask).logits, lambda x: x
