"""Matcher: kinds, normalisation, fuzzy budget, refusals."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auditor.errors import UserError
from auditor.match import check, looks_like_refusal, normalize, substring_distance

DEC = "amber falcon quiet river"


def test_exact_and_contains() -> None:
    assert check(f"  {DEC}\n", DEC).kind == "exact"
    r = check(f"Based on my fingerprint, the message is: {DEC}", DEC)
    assert (r.hit, r.kind) == (True, "contains")


def test_normalized_nfkc_case_and_punctuation() -> None:
    assert check("The answer: AMBER-Falcon, quiet... river!", DEC).kind == "normalized"
    # full-width / half-width forms fold under NFKC
    assert check("答え：ﾊﾘﾈｽﾞﾐ です", "ハリネズミ").kind == "normalized"
    assert check("ａｍｂｅｒ ｆａｌｃｏｎ ｑｕｉｅｔ ｒｉｖｅｒ", DEC).kind == "normalized"
    assert normalize("  A\tB,,C  ") == "a b c"


def test_fuzzy_within_budget_only() -> None:
    # 23 normalised chars * 0.15 -> 3 edits allowed
    assert check("the message is: ambr falcn quiet rivr", DEC).kind == "fuzzy"
    assert not check("the message is: amb falc qu rivr", DEC).hit
    assert not check("the message is: ambr falcn quiet rivr", DEC, mode="normalized").hit
    assert check("ambr falcn quiet rivr", DEC, max_rel_distance=0.0).hit is False


def test_short_decryption_gets_no_fuzzy_slack() -> None:
    assert not check("ハリネズ", "ハリネズミ").hit  # 5 chars * 0.15 -> 0 edits


def test_modes_cap_looseness() -> None:
    assert not check(f"x {DEC} y", DEC, mode="exact").hit
    assert check(f"x {DEC} y", DEC, mode="contains").kind == "contains"
    assert not check(DEC.upper(), DEC, mode="contains").hit


def test_miss_on_unrelated_text() -> None:
    r = check("I cannot decrypt this message, it seems random.", DEC)
    assert (r.hit, r.kind) == (False, None)


def test_substring_distance() -> None:
    assert substring_distance("abc", "xxabcxx", 1) == 0
    assert substring_distance("abc", "xxabxx", 2) == 1
    assert substring_distance("abcdef", "zzzz", 1) == 2  # budget + 1 when beyond


@pytest.mark.parametrize("bad", [{"mode": "regex"}, {"max_rel_distance": 0.7}])
def test_bad_options(bad: dict[str, object]) -> None:
    with pytest.raises(UserError):
        check("x", DEC, **bad)  # type: ignore[arg-type]


def test_empty_decryption_is_user_error_without_text() -> None:
    with pytest.raises(UserError) as info:
        check("secret response", "  ")
    assert "secret response" not in str(info.value)


@pytest.mark.parametrize("text", [
    "I can't help with that.",
    "I’m sorry, but I cannot decrypt this message.",
    "Sorry, this does not look like anything I know.",
    "As an AI language model, I am unable to decode it.",
    "I'm unable to assist with that request.",
])
def test_refusals(text: str) -> None:
    assert looks_like_refusal(text)


@pytest.mark.parametrize("text", [
    f"Based on my fingerprint, the message is: {DEC}",
    "The capital of France is Paris.",
    "Here is a poem about rivers and falcons.",
])
def test_not_refusals(text: str) -> None:
    assert not looks_like_refusal(text)


@settings(max_examples=200, deadline=None)
@given(prefix=st.text(max_size=60), suffix=st.text(max_size=60),
       dec=st.text(alphabet=st.characters(categories=["L", "N"]), min_size=1, max_size=30))
def test_embedded_decryption_always_hits(prefix: str, suffix: str, dec: str) -> None:
    assert check(prefix + dec + suffix, dec).hit
    assert normalize(normalize(prefix)) == normalize(prefix)  # idempotent


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet="abcdefghij ", max_size=80))
def test_fuzzy_never_fires_on_disjoint_alphabet(text: str) -> None:
    assert not check(text, "klmnop qrstuv wxyz").hit
