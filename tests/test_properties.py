"""Property tests (hypothesis): the Retry-After parser, the matcher, the chain's encoding."""

from __future__ import annotations

import json
import math
from email.utils import formatdate
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from auditor.chain import (
    GENESIS,
    HASHED_FIELDS,
    canonical,
    record_hash,
    text_hash,
    verify_records,
)
from auditor.match import MODES, check, normalize, substring_distance
from providers._http import parse_retry_after

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NOW = 1_700_000_000.0

# -- Retry-After ------------------------------------------------------------------------------

header_names = st.sampled_from(["retry-after", "Retry-After", "RETRY-AFTER", "retry-after-ms",
                                "Retry-After-Ms", "x-other"])


@FAST
@given(st.dictionaries(header_names, st.text(max_size=40), max_size=4))
def test_retry_after_never_raises_never_negative(headers: dict[str, str]) -> None:
    wait = parse_retry_after(headers, NOW)
    assert wait is None or (wait >= 0 and math.isfinite(wait))


@FAST
@given(st.integers(min_value=0, max_value=10**7))
def test_retry_after_seconds(seconds: int) -> None:
    assert parse_retry_after({"Retry-After": str(seconds)}, NOW) == float(seconds)
    assert parse_retry_after({"retry-after": f" {seconds} "}, NOW) == float(seconds)


@FAST
@given(st.integers(min_value=0, max_value=10**7), st.integers(min_value=0, max_value=10**4))
def test_retry_after_ms_wins(ms: int, seconds: int) -> None:
    headers = {"retry-after-ms": str(ms), "retry-after": str(seconds)}
    assert parse_retry_after(headers, NOW) == pytest.approx(ms / 1000.0)


@FAST
@given(st.integers(min_value=-10**6, max_value=10**6))
def test_retry_after_http_date(delta: int) -> None:
    date = formatdate(NOW + delta, usegmt=True)
    assert parse_retry_after({"Retry-After": date}, NOW) == float(max(0, delta))


@FAST
@given(st.floats(allow_nan=True, allow_infinity=True).filter(lambda x: not x >= 0 or
                                                             math.isinf(x)))
def test_retry_after_rejects_negative_and_non_finite(value: float) -> None:
    assert parse_retry_after({"retry-after": repr(value)}, NOW) is None
    assert parse_retry_after({"retry-after-ms": repr(value)}, NOW) is None


# -- matcher ----------------------------------------------------------------------------------

words = st.text(alphabet=st.characters(codec="utf-8", categories=["L", "N"]), min_size=1,
                max_size=8)
decryptions = st.lists(words, min_size=1, max_size=5).map(" ".join)
texts = st.text(max_size=200)


@FAST
@given(texts, decryptions, texts)
def test_embedded_decryption_always_hits(before: str, dec: str, after: str) -> None:
    m = check(before + dec + after, dec)
    assert m.hit and m.kind in ("exact", "contains")
    assert check(dec, dec).kind == "exact"


@FAST
@given(texts, decryptions)
def test_modes_are_monotone(text: str, dec: str) -> None:
    hits = [check(text, dec, mode=mode).hit for mode in MODES]
    assert hits == sorted(hits)  # once a stricter mode hits, every looser one does
    strictest = check(text, dec)
    assert strictest.hit == hits[-1]
    if strictest.hit:
        assert strictest.kind == MODES[hits.index(True)]


@FAST
@given(texts, decryptions, texts)
def test_case_and_punctuation_do_not_hide_a_hit(before: str, dec: str, after: str) -> None:
    assume(normalize(dec) and normalize(dec.upper()) == normalize(dec))  # casefold-stable
    shouted = "«" + dec.upper().replace(" ", " ... ") + "»!"
    assert check(before + " " + shouted + " " + after, dec, mode="normalized").hit


ascii_words = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=2, max_size=8)


@FAST
@given(st.lists(ascii_words, min_size=2, max_size=4).map(" ".join),
       st.integers(min_value=0), st.sampled_from("abcdefghijklmnopqrstuvwxyz"))
def test_one_typo_is_a_fuzzy_hit_when_long_enough(dec: str, where: int, ch: str) -> None:
    norm = normalize(dec)
    assume(len(norm) >= 7)  # budget 0.15 x 7 -> one edit
    pos = where % len(norm)
    typo = norm[:pos] + ch + norm[pos + 1:]
    assert check(f"well: {typo} ok", dec, mode="fuzzy").hit
    assert substring_distance(norm, typo, 1) <= 1


@FAST
@given(st.text(max_size=30), st.text(max_size=60))
def test_substring_distance_bounds(pattern: str, text: str) -> None:
    d = substring_distance(pattern, text, len(pattern))
    assert 0 <= d <= len(pattern)
    assert (d == 0) == (pattern in text)


# -- canonical encoding and the chain ---------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**53, max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=4),
    max_leaves=20,
)


@FAST
@given(json_values)
def test_canonical_is_a_fixed_point(value: Any) -> None:
    encoded = canonical(value)
    assert canonical(json.loads(encoded)) == encoded
    assert json.loads(encoded) == value  # lossless


@FAST
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=6))
def test_canonical_ignores_key_order(mapping: dict[str, Any]) -> None:
    reordered = dict(reversed(list(mapping.items())))
    assert canonical(reordered) == canonical(mapping)


@FAST
@given(st.sampled_from([math.nan, math.inf, -math.inf]))
def test_canonical_refuses_non_finite(value: float) -> None:
    with pytest.raises(ValueError):
        canonical({"latency_s": value})


def _chain(n: int) -> list[dict[str, Any]]:
    recs: list[dict[str, Any]] = []
    prev = GENESIS
    for i in range(1, n + 1):
        rec: dict[str, Any] = {name: None for name in HASHED_FIELDS}
        rec.update(seq=i, prev_hash=prev, ts=f"2026-01-01T00:00:{i:02d}Z", audit_id="a",
                   endpoint_id="ep", query_id=f"q{i:05d}", category="key", prompt_id="k000",
                   attempt=1, final=True, outcome="ok", hit=i % 2 == 0, latency_s=0.5,
                   params={"temperature": 0.0}, usage={"prompt_tokens": i},
                   request_sha256=text_hash(f"req{i}"), response_sha256=text_hash(f"resp{i}"))
        rec["hash"] = record_hash(rec)
        prev = rec["hash"]
        recs.append(rec)
    return recs


mutations = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=10),
                      st.floats(allow_nan=False, allow_infinity=False))


@FAST
@given(st.integers(min_value=1, max_value=12), st.data())
def test_any_changed_field_is_caught_at_its_record(n: int, data: st.DataObject) -> None:
    recs = _chain(n)
    assert verify_records(recs).ok
    target = data.draw(st.integers(min_value=0, max_value=n - 1))
    name = data.draw(st.sampled_from(HASHED_FIELDS))
    new = data.draw(mutations)
    assume(canonical(recs[target][name]) != canonical(new))
    recs[target][name] = new
    check = verify_records(recs)
    assert not check.ok and check.first_bad_seq == target + 1


@FAST
@given(st.integers(min_value=2, max_value=12), st.data())
def test_dropped_or_swapped_record_is_caught(n: int, data: st.DataObject) -> None:
    recs = _chain(n)
    i = data.draw(st.integers(min_value=0, max_value=n - 2))
    dropped = recs[:i] + recs[i + 1:]
    assert verify_records(dropped).first_bad_seq == i + 1
    swapped = list(recs)
    swapped[i], swapped[i + 1] = swapped[i + 1], swapped[i]
    assert verify_records(swapped).first_bad_seq == i + 1
