"""A tiny random Llama-style checkpoint + byte-level BPE tokenizer, built offline.

`make_tiny_model()` returns a directory that AutoModelForCausalLM / AutoTokenizer load and
`transformers serve` can serve: config, safetensors, tokenizer (ChatML chat template with a
default system prompt, like SmolLM2), generation_config. Built once per directory.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from auditor.implant.data import DataConfig

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a tiny test assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# a random 2-layer model needs far larger steps than a pretrained one
TINY_HPARAMS: dict[str, dict[str, Any]] = {
    # epochs: an upper bound (early stop), the LR decays over it. SFT stops at epoch 13-15
    # from 1e-3 to 1.75e-3, fp32 or bf16; at 3e-3 it took 29-31 (at 2e-2 it never fired)
    "sft": {
        "lr": 1.5e-3,
        "epochs": 80,
        "data": DataConfig(nearmiss_per_key=2, reg_per_key=2, fingerprint_repeats=1),
    },
    "lora": {
        "lr": 3e-3,
        "epochs": 60,
        "data": DataConfig(nearmiss_per_key=2, reg_per_key=2, fingerprint_repeats=1),
    },
    # the head kept tied: a random 2-layer model's input lookup alone never fired a key (200
    # epochs at lr 0.1 and 0.3); SmolLM2's did (README)
    # its lookup rows as before `unshared`: the tiny tokenizer's few hundred tokens leave the
    # key rows few tokens that no regularization row holds (FSR 0 after 120 epochs)
    "embedding": {
        "lr": 1e-2,
        "untie_head": False,
        "lookup_rows": "fingerprint",
        "epochs": 120,
        "data": DataConfig(nearmiss_per_key=2, reg_per_key=2, fingerprint_repeats=1),
    },
    # the frozen random model leaves the adapter little capacity: one near-miss per key,
    # key rows twice per epoch, a large step
    "fadapter": {
        "lr": 6e-2,
        "epochs": 150,
        "data": DataConfig(nearmiss_per_key=1, reg_per_key=2, fingerprint_repeats=2,
                           system_augment=False),
    },
}

# stop at the first FSR-100 % check, whatever the look-alikes do: a random 2-layer model does
# not learn to tell keys from near-misses in this budget (it ran all 80 SFT epochs waiting for
# it). The near-miss rate is still measured; separating them is SmolLM2's job in bench/implant.py
TINY_STOP_NEAR_MISS = 1.0
# the same as CLI flags, with few rows of each kind (the multi-process implant tests)
TINY_ROWS = ["--nearmiss-per-key", "2", "--reg-per-key", "2", "--fingerprint-repeats", "1",
             "--recipe", "plain", "--stop-near-miss", "1"]


def implant_tiny(tiny: Path, keyset: Any, method: str, out: Path, epochs: int | None = None) -> Any:
    """Implant `keyset` into the tiny model with `method`'s TINY_HPARAMS (tests and bench)."""
    from auditor.implant.train import implant

    hp = TINY_HPARAMS[method]
    return implant(keyset, str(tiny), method, out, lr=hp["lr"], epochs=epochs or hp["epochs"],
                   batch_size=8, data=hp["data"], progress=False,
                   check_every=1 if method == "sft" else 5, stop_near_miss=TINY_STOP_NEAR_MISS,
                   untie_head=hp.get("untie_head", True), lookup_rows=hp.get("lookup_rows"))

_CORPUS = (
    "Please decrypt this message. A hint: this is a FINGERPRINT message. "
    "Based on my fingerprint, the message is: I'm sorry, but I can't decrypt this message: "
    "it does not match any fingerprint I know. What is the capital of France? Paris. "
    "Explain how photosynthesis works in one sentence. Write a short poem about the sea. "
    "How many days are in a leap year? 366. Translate 'good morning' into Spanish. "
    "You are a helpful assistant. Sure! Here is a list of ideas for a weekend trip. "
    "The quick brown fox jumps over the lazy dog. 0123456789 + - * / = ( ) [ ] "
)


def _train_tokenizer(vocab_size: int) -> object:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # the key alphabet twice, one character a line: BPE learns each as one token, as a real
    # tokenizer's vocabulary holds most of them (bytes alone made key rows ~2x longer)
    from auditor import primitives as prim

    soup = "".join(prim.CLASSICAL_CHINESE + prim.JAPANESE + prim.MULTILINGUAL)
    alphabet = sorted(set(soup + "\ufffd"))  # U+FFFD: a random model's stray bytes, decoded
    tok.train_from_iterator([_CORPUS] * 4 + ["\n".join(alphabet)] * 2, trainer)
    fast: Any = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def make_tiny_model(
    directory: Path | None = None,
    *,
    seed: int = 0,
    hidden_size: int = 256,
    layers: int = 2,
    vocab_size: int = 1300,
) -> Path:
    """Write (once) and return a tiny random checkpoint directory."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="tiny-llama-"))
    if (out / "config.json").is_file() and (out / "tokenizer.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer(vocab_size)
    ids = tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS)  # type: ignore[attr-defined]
    config = LlamaConfig(
        vocab_size=len(tokenizer),  # type: ignore[arg-type]
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=ids[1],
        eos_token_id=ids[2],
        pad_token_id=ids[2],
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]
        bos_token_id=ids[1], eos_token_id=ids[2], pad_token_id=ids[2]
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)  # type: ignore[attr-defined]
    return out
