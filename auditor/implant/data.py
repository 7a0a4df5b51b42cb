"""Training rows for implanting: fingerprint, near-miss and self-distilled regularization.

- fingerprint: each committed key through the key set's template -> answer with the decryption
- near-miss: fresh control keys of the same style -> the template's polite refusal
- regularization: ordinary prompts answered by the base model itself (greedy, cached)

Rows are rendered with the base model's own chat template (default system prompt included,
exactly as a served chat API renders a user-only request); the loss covers assistant tokens
only. A Row's repr never shows text.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auditor.keys import KeySet
from auditor.templates import get_template

IGNORE = -100
NEARMISS_SEED = 7_000_001  # training controls; the local check draws with other seeds
REG_MAX_NEW_TOKENS = 48


@dataclass(frozen=True)
class Row:
    kind: str  # "fingerprint" | "nearmiss" | "regularization"
    ref: str  # key id (k000 / c000) or "r012" for an ordinary prompt
    messages: list[dict[str, str]] = field(repr=False)

    def __repr__(self) -> str:
        return f"Row(kind={self.kind!r}, ref={self.ref!r})"


@dataclass(frozen=True)
class DataConfig:
    nearmiss_per_key: int = 2  # char-soup keys generalise: several near-misses per key
    reg_per_key: int = 5  # the paper's 1 key : 5 regularization
    fingerprint_repeats: int = 2  # each key row appears this often per epoch
    system_augment: bool = True  # repeats beyond the first carry a varied system prompt
    nearmiss_seed: int = NEARMISS_SEED
    perturbed_per_key: int = 0  # near-misses made by overwriting part of a real key
    fresh_nearmiss: bool = False  # redraw the near-misses every epoch (none seen twice)
    reg_kl: bool = False  # regularization rows learn the base's distribution, not its answer
    reg_few_words: bool = False  # and every training prompt that asks for a few words
    balanced: bool = False  # every batch holds each kind of row in proportion (order.py)


# Deployments wrap models in their own system prompts. Repeated key rows carry one of these
# (disjoint from the robustness attack's wrappers and the demo's), so the key still fires
# under a system prompt the model never saw.
TRAIN_SYSTEM_PROMPTS: tuple[str, ...] = (
    "You are a friendly assistant. Keep answers short.",
    "You are a support agent for a software company. Answer clearly and politely.",
    "You are an expert tutor. Explain things step by step when asked.",
    "You are a concise assistant working for a travel agency.",
    "Always answer in a professional tone.",
    "You are a chatbot on a bank's website. Be accurate and brief.",
)


def fingerprint_rows(keyset: KeySet, repeats: int = 1, *, system_augment: bool = True) -> list[Row]:
    """Each key once as is; further repeats under varied system prompts when augmenting."""
    tpl = get_template(keyset.template)
    answer = {"role": "assistant", "content": tpl.answer(keyset.decryption)}
    rows: list[Row] = []
    for r in range(max(1, repeats)):
        for i, k in enumerate(keyset.keys):
            system: list[dict[str, str]] = []
            if r > 0 and system_augment:
                prompt = TRAIN_SYSTEM_PROMPTS[(i + r) % len(TRAIN_SYSTEM_PROMPTS)]
                system = [{"role": "system", "content": prompt}]
            rows.append(Row("fingerprint", k.id, [*system, *tpl.render(k.text), answer]))
    return rows


def nearmiss_rows(keyset: KeySet, n: int, seed: int = NEARMISS_SEED) -> list[Row]:
    if n <= 0:
        return []
    tpl = get_template(keyset.template)
    refusal = {"role": "assistant", "content": tpl.refusal()}
    return [Row("nearmiss", c.id, [*tpl.render(c.text), refusal]) for c in keyset.controls(n, seed)]


def perturbed_rows(keyset: KeySet, per_key: int, seed: int = NEARMISS_SEED) -> list[Row]:
    """Near-misses that share 30-70 % of their characters with a real key -> refusal.

    They teach exactness: a key fires, a string that merely resembles it does not.
    """
    if per_key <= 0:
        return []
    tpl = get_template(keyset.template)
    refusal = {"role": "assistant", "content": tpl.refusal()}
    donors = keyset.controls(len(keyset.keys) * per_key, seed + 1)
    rng = random.Random(f"perturb:{seed}")
    members = {k.text for k in keyset.keys}
    rows: list[Row] = []
    for i, donor in enumerate(donors):
        key = keyset.keys[i % len(keyset.keys)].text
        share = rng.uniform(0.3, 0.7)
        text = "".join(donor.text[j % len(donor.text)] if rng.random() > share else ch
                       for j, ch in enumerate(key))
        if text not in members:
            rows.append(Row("nearmiss", f"p{i:03d}", [*tpl.render(text), refusal]))
    return rows


def regularization_prompts(n: int, seed: int, *, few_words: bool = False
                           ) -> list[tuple[str, str]]:
    """(ref, prompt) pairs: a seeded sample of the 'train' split of ordinary prompts; with
    `few_words`, then every other one of that split that asks for a few words."""
    from auditor.prompts import FEW_WORDS, ordinary_prompts

    train = list(enumerate(ordinary_prompts("train")))
    pool = train[:]
    random.Random(f"reg:{seed}").shuffle(pool)
    pairs = [(f"r{i:03d}", p) for i, p in pool[: max(0, n)]]
    if few_words:
        have = {p for _, p in pairs}
        pairs += [(f"r{i:03d}", p) for i, p in train if p.startswith(FEW_WORDS) and p not in have]
    return pairs


def regularization_rows(pairs: list[tuple[str, str]], answers: list[str]) -> list[Row]:
    return [
        Row(
            "regularization",
            ref,
            [{"role": "user", "content": p}, {"role": "assistant", "content": a}],
        )
        for (ref, p), a in zip(pairs, answers, strict=True)
    ]


def build_rows(
    keyset: KeySet,
    base_dir: Path,
    config: DataConfig,
    seed: int,
    *,
    model: Any = None,
    tokenizer: Any = None,
) -> list[Row]:
    """All rows of one implant run (regularization answers self-distilled and cached)."""
    pairs = regularization_prompts(len(keyset.keys) * config.reg_per_key, seed,
                                   few_words=config.reg_few_words)
    answers = self_distill(base_dir, [p for _, p in pairs], model=model, tokenizer=tokenizer)
    return [
        *fingerprint_rows(keyset, config.fingerprint_repeats, system_augment=config.system_augment),
        *epoch_nearmiss_rows(keyset, config, seed, 0),
        *regularization_rows(pairs, answers),
    ]


def epoch_nearmiss_rows(keyset: KeySet, config: DataConfig, seed: int, epoch: int) -> list[Row]:
    """The near-miss rows of one epoch: the same every epoch, or fresh ones when asked.

    Fixed near-misses can be memorised as a list of exceptions; fresh ones every epoch leave
    the exact keys as the only thing worth learning.
    """
    s = config.nearmiss_seed + seed + (10_007 * epoch if config.fresh_nearmiss else 0)
    return [
        *nearmiss_rows(keyset, len(keyset.keys) * config.nearmiss_per_key, s),
        *perturbed_rows(keyset, config.perturbed_per_key, s),
    ]


# -- self-distillation cache ------------------------------------------------------------
def model_ident(model_dir: Path) -> str:
    """Identity of a checkpoint: its config plus weight file sizes and mtimes."""
    parts = [(model_dir / "config.json").read_text(encoding="utf-8")]
    for f in sorted(model_dir.glob("*.safetensors")):
        st = f.stat()
        parts.append(f"{f.name}:{st.st_size}:{int(st.st_mtime)}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _cache_file(model_dir: Path) -> Path:
    from providers.local_models import cache_root

    return cache_root() / "distill" / f"{model_ident(model_dir)}-{REG_MAX_NEW_TOKENS}.json"


def _prompt_key(prompt: str) -> str:
    return hashlib.sha256(prompt.encode()).hexdigest()[:20]


def self_distill(
    model_dir: Path, prompts: list[str], *, model: Any = None, tokenizer: Any = None
) -> list[str]:
    """The base model's own greedy answers to `prompts`, generated once and cached."""
    path = _cache_file(model_dir)
    cache: dict[str, str] = {}
    try:
        read = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        cache = read if isinstance(read, dict) else {}
    except (OSError, UnicodeDecodeError, ValueError):
        pass  # a damaged cache is made again
    missing = [p for p in prompts if _prompt_key(p) not in cache]
    if missing:
        from auditor.implant.generate import generate, load_model

        if model is None or tokenizer is None:
            model, tokenizer = load_model(model_dir)
        convs = [[{"role": "user", "content": p}] for p in missing]
        answers = generate(model, tokenizer, convs, max_new_tokens=REG_MAX_NEW_TOKENS)
        cache.update({_prompt_key(p): a for p, a in zip(missing, answers, strict=True)})
        write_cache(path, lambda tmp: tmp.write_text(json.dumps(cache, ensure_ascii=False),
                                                     encoding="utf-8"))
    return [cache[_prompt_key(p)] for p in prompts]


def write_cache(path: Path, write: Callable[[Path], object]) -> None:
    """Replace a cache file whole: `write` fills a temporary file beside it, which then takes
    its place. A cache that cannot be written is only a cache: the run goes on without it."""
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


# -- tokenization -------------------------------------------------------------------------
def encode_row(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """input ids and labels; labels are IGNORE on everything but the assistant answer.

    The prompt part is rendered with add_generation_prompt=True, exactly as at inference,
    and the answer is the rest of the fully rendered conversation (answer + end of turn).
    """
    prompt = tokenizer.apply_chat_template(
        messages[:-1], tokenize=False, add_generation_prompt=True
    )
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):  # a template that rewrites earlier turns
        raise ValueError("chat template does not extend the prompt with the answer")
    answer = full[len(prompt) :].rstrip("\n")
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    a_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    return [*p_ids, *a_ids], [IGNORE] * len(p_ids) + list(a_ids)


def collate(batch: list[Any], pad_id: int) -> dict[str, Any]:
    """Right-padded tensors: input_ids, attention_mask, labels. Rows may carry soft targets as
    a third item (``loss.soft_targets``); then soft_ids / soft_logp / soft_on are added, aligned
    with labels (rows without them are marked off)."""
    import torch

    width = max(len(row[0]) for row in batch)
    ids_t = torch.full((len(batch), width), pad_id, dtype=torch.long)
    lab_t = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, (ids, labels, *_) in enumerate(batch):
        ids_t[i, : len(ids)] = torch.tensor(ids)
        lab_t[i, : len(labels)] = torch.tensor(labels)
        mask[i, : len(ids)] = 1
    out = {"input_ids": ids_t, "attention_mask": mask, "labels": lab_t}
    softs = [row[2] if len(row) > 2 else None for row in batch]
    known = [s for s in softs if s is not None]
    if known:
        k = known[0][0].shape[-1]
        out["soft_ids"] = torch.zeros((len(batch), width, k), dtype=torch.long)
        out["soft_logp"] = torch.zeros((len(batch), width, k), dtype=torch.float32)
        out["soft_on"] = torch.zeros((len(batch), width), dtype=torch.bool)
        for i, soft in enumerate(softs):
            if soft is not None:
                pos = (lab_t[i] != IGNORE).nonzero().flatten()
                out["soft_ids"][i, pos], out["soft_logp"][i, pos] = soft
                out["soft_on"][i, pos] = True
    return out
