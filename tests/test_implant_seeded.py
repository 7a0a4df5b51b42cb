"""Seeded runs repeat on one machine: the same seed gives bit-equal weights and figures, another
seed other weights. Each method's implant and the shadow, on a tiny random Llama on CPU."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path
from typing import Any

import pytest

from auditor.keys import KeySet
from tests.tiny_model import TINY_HPARAMS

torch = pytest.importorskip("torch")


pytestmark = pytest.mark.usefixtures("shared_cache")


def _weights(out: Path) -> dict[str, str]:
    """Digest of each weights file a run wrote: the model and, beside it, a private adapter."""
    inside = {f.name: f for f in out.glob("*.safetensors")}
    beside = {f.name.removeprefix(out.name): f for f in out.parent.glob(f"{out.name}.*")}
    assert inside, f"no weights in {out}"
    return {name: hashlib.sha256(f.read_bytes()).hexdigest()
            for name, f in sorted({**inside, **beside}.items())}


# every figure a run reports but its timings and where it wrote
_TIMED = {"out", "adapter", "seconds", "seconds_to_fsr100", "seconds_to_perfect"}


@pytest.mark.parametrize("method", ["sft", "lora", "embedding", "fadapter"])
def test_an_implant_repeats_bit_for_bit_under_its_seed(
    tiny: Path, tmp_path: Path, method: str
) -> None:
    from auditor.implant.train import implant

    keyset = KeySet.generate("tiny", 3, seed=5)
    hp = TINY_HPARAMS[method]
    common: dict[str, Any] = {
        "lr": hp["lr"], "epochs": 2, "data": hp["data"], "progress": False,
        "early_stop": False, "untie_head": hp.get("untie_head", True),
        "lookup_rows": hp.get("lookup_rows"),
    }
    runs = {name: implant(keyset, str(tiny), method, tmp_path / name, seed=seed, **common)
            for name, seed in (("first", 7), ("again", 7), ("other", 8))}
    figures = {name: {k: v for k, v in r.to_dict().items() if k not in _TIMED}
               for name, r in runs.items()}
    assert figures["first"] == figures["again"]
    assert runs["first"].steps > 0
    first, again, other = (_weights(tmp_path / n) for n in ("first", "again", "other"))
    assert first == again
    assert len(first) == (2 if method == "fadapter" else 1)  # the adapter is saved apart
    assert first != other  # the seed draws the look-alikes and the order, so it matters
    if runs["first"].adapter is not None:  # private from its first byte
        assert stat.S_IMODE(runs["first"].adapter.stat().st_mode) == 0o600


def test_a_shadow_repeats_bit_for_bit_under_its_seed(tiny: Path, tmp_path: Path) -> None:
    from auditor.implant.shadow import make_shadow

    made = {name: make_shadow(str(tiny), tmp_path / name, rows=16, epochs=1, seed=seed, lr=1e-3)
            for name, seed in (("first", 3), ("again", 3), ("other", 4))}
    first, again, other = (_weights(made[n]) for n in ("first", "again", "other"))
    assert first == again and first != other
