"""Which `unshared` lookup rows ordinary text still reads: the embedding-only drift's sources.

For each key set: the key rows' tokens, those `--lookup-rows unshared` trains, how many of the
held-out conversations that `check-local` measures drift on hold one of them (and how many
distinct tokens), whether those tokens come from the key texts, the decryption or elsewhere,
and what counting all the training prompts as ordinary text (not only the run's) would drop.
Counts only: no key text is printed. Needs no training; the base answers its prompts once
(cached, as an implant would).

    .venv/bin/python bench/drift_tokens.py --keys keys/a.json keys/b.json
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import table_console  # noqa: E402


def _ids(tok: Any, messages: list[dict[str, str]]) -> set[int]:
    from auditor.implant.data import encode_row

    return set(encode_row(tok, messages)[0])


def drift_tokens(tok: Any, keyset: Any, rows: Sequence[Any], heldout: Sequence[tuple[str, str]],
                 train_prompts: Sequence[str]) -> dict[str, int]:
    """Counts for one key set: `rows` are its implant rows (data.Row), `heldout` the (prompt,
    base answer) pairs drift is measured on, `train_prompts` every prompt regularization may
    draw from."""
    from auditor.implant.data import TRAIN_SYSTEM_PROMPTS
    from auditor.implant.lookup_rows import (
        fingerprint_token_ids,
        text_token_ids,
        unshared_token_ids,
    )

    encoded = [(sorted(_ids(tok, r.messages)), None) for r in rows]
    kinds = [r.kind for r in rows]
    unshared = set(unshared_token_ids(encoded, kinds, text_token_ids(tok, TRAIN_SYSTEM_PROMPTS)))
    ordinary: set[int] = set()
    for p in train_prompts:  # as a user turn, the way a regularization row holds it
        ordinary |= _ids(tok, [{"role": "user", "content": p},
                               {"role": "assistant", "content": ""}])
    keys = text_token_ids(tok, [k.text for k in keyset.keys])
    decryption = text_token_ids(tok, [keyset.decryption])
    reached: set[int] = set()
    convs = 0
    for prompt, answer in heldout:
        hit = unshared & _ids(tok, [{"role": "user", "content": prompt},
                                    {"role": "assistant", "content": answer}])
        convs += bool(hit)
        reached |= hit
    return {
        "key_row_tokens": len(fingerprint_token_ids(encoded, kinds)),
        "unshared": len(unshared),
        "heldout": len(heldout),
        "heldout_reached": convs,
        "tokens_reached": len(reached),
        "of_keys": len(reached & keys),
        "of_decryption": len(reached & decryption - keys),
        "other": len(reached - keys - decryption),
        "dropped_by_all_train_prompts": len(reached & ordinary),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--keys", nargs="+", type=Path, required=True)
    p.add_argument("--base", default="smollm2")
    p.add_argument("--heldout", type=int, default=100, help="as check-local's --ordinary")
    p.add_argument("--recipe", default="clean", help="whose rows (regularization count)")
    p.add_argument("--seed", type=int, default=0, help="the implant's --seed")
    args = p.parse_args()
    from rich.table import Table
    from transformers import AutoTokenizer

    from auditor.implant.data import build_rows, self_distill
    from auditor.implant.recipes import RECIPES
    from auditor.keys import KeySet
    from auditor.prompts import ordinary_prompts
    from providers.local_models import resolve_base

    base = resolve_base(args.base)
    tok = AutoTokenizer.from_pretrained(base)
    held = ordinary_prompts("heldout")[: args.heldout]
    pairs = list(zip(held, self_distill(base, held), strict=True))
    train = ordinary_prompts("train")
    cols = ["key set", "key-row tokens", "unshared", "held-out reached", "tokens reached",
            "of keys / decryption / other", "dropped by all training prompts"]
    table = Table(title=f"unshared rows that held-out ordinary text reads ({args.base})")
    for c in cols:
        table.add_column(c)
    for path in args.keys:
        ks = KeySet.load(path)
        n = drift_tokens(tok, ks, build_rows(ks, base, RECIPES[args.recipe].data, args.seed),
                         pairs, train)
        table.add_row(ks.name, str(n["key_row_tokens"]), str(n["unshared"]),
                      f"{n['heldout_reached']} of {n['heldout']}", str(n["tokens_reached"]),
                      f"{n['of_keys']} / {n['of_decryption']} / {n['other']}",
                      str(n["dropped_by_all_train_prompts"]))
    table_console().print(table)


if __name__ == "__main__":
    main()
