"""Pure statistics: references, determinism, validity under the null (simulated)."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from auditor import stats
from auditor.errors import UserError


def test_holm_and_bh_match_statsmodels() -> None:
    from statsmodels.stats.multitest import multipletests

    rng = random.Random(4)
    for m in (1, 2, 5, 17):
        ps = [rng.random() ** 3 for _ in range(m)] + [0.01] * (m % 3)  # ties included
        for ours, name in ((stats.holm, "holm"), (stats.benjamini_hochberg, "fdr_bh")):
            ref = multipletests(ps, method=name)[1]
            assert ours(ps) == pytest.approx(list(ref), abs=1e-12)


def test_adjust_rejects_bad_input() -> None:
    with pytest.raises(UserError):
        stats.adjust([0.1, 1.5], "holm")
    with pytest.raises(UserError):
        stats.adjust([0.1], "bonferroni-ish")


def test_exact_tests_match_scipy() -> None:
    from scipy.stats import binomtest, fisher_exact

    assert stats.binomial_p(3, 40, 0.01) == pytest.approx(
        binomtest(3, 40, 0.01, alternative="greater").pvalue, rel=1e-12)
    assert stats.fisher_greater(9, 20, 2, 20) == pytest.approx(
        fisher_exact([[9, 11], [2, 18]], alternative="greater").pvalue, rel=1e-12)
    lo, hi = stats.clopper_pearson(3, 10)
    ci = binomtest(3, 10).proportion_ci(method="exact")
    assert (lo, hi) == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert stats.clopper_pearson_upper(0, 20, 0.95) == pytest.approx(1 - 0.05 ** (1 / 20))


def test_same_input_bit_identical() -> None:
    outs = [(stats.binomial_p(4, 31, 0.0123), stats.log_e_value(4, 31, 0.0123),
             stats.clopper_pearson(4, 31), stats.holm([0.2, 0.01, 0.03]),
             stats.power_sequential(30, 0.3, 0.01, 0.01)) for _ in range(3)]
    assert repr(outs[0]) == repr(outs[1]) == repr(outs[2])


def test_e_process_false_claim_rate_under_null() -> None:
    """1,000 null endpoints at the boundary rate p0, monitored after every key."""
    alpha, p0, n_keys, endpoints = 0.05, 0.05, 60, 1000
    rng = random.Random(20240611)
    claims_seq = claims_fixed = 0
    for _ in range(endpoints):
        outcomes = [rng.random() < p0 for _ in range(n_keys)]
        path = stats.e_trajectory(outcomes, p0)
        claims_seq += stats.sequential_p(path) <= alpha  # optional stopping: any time
        claims_fixed += stats.binomial_p(sum(outcomes), n_keys, p0) <= alpha
    tol = 3 * math.sqrt(alpha * (1 - alpha) / endpoints)
    print(f"false claims: sequential {claims_seq}/1000, fixed {claims_fixed}/1000")
    assert claims_seq / endpoints <= alpha + tol
    assert claims_fixed / endpoints <= alpha + tol


def test_naive_repeated_binomial_peeking_would_inflate() -> None:
    """Control: peeking at the fixed test after every key breaks alpha; the e-process does not."""
    alpha, p0, n_keys, endpoints = 0.05, 0.05, 60, 400
    rng = random.Random(7)
    naive = 0
    for _ in range(endpoints):
        hits = 0
        for t in range(1, n_keys + 1):
            hits += rng.random() < p0
            if stats.binomial_p(hits, t, p0) <= alpha:
                naive += 1
                break
    assert naive / endpoints > alpha


def test_power_figures_and_monotone_curve() -> None:
    curve = stats.sequential_power_curve(40, 0.3, 0.01, 0.01)
    assert all(a <= b for a, b in itertools.pairwise(curve))
    assert curve[-1] >= 0.99
    assert stats.power_binomial(40, 0.3, 0.01, 0.001) >= 0.99
    assert stats.power(40, 0.3, 0.01, 0.01) == curve[-1]
    assert stats.power(40, 0.3, 0.01, 0.01, sequential=False) >= 0.99
    assert stats.queries_needed(0.3, 0.01, 0.01) == next(
        t for t, p in enumerate(curve, 1) if p >= 0.99)
    assert stats.queries_needed(0.001, 0.01, 0.01, max_n=50) is None
    assert stats.power_sequential(40, 0.01, 0.01, 0.01) < 0.05  # at p0: no power, as it must


def test_power_sequential_matches_simulation() -> None:
    rng = random.Random(3)
    n, fsr, alpha, p0 = 25, 0.2, 0.01, 0.01
    crossed = sum(
        stats.sequential_p(stats.e_trajectory([rng.random() < fsr for _ in range(n)], p0))
        <= alpha for _ in range(2000))
    assert crossed / 2000 == pytest.approx(stats.power_sequential(n, fsr, alpha, p0), abs=0.035)


def test_baseline_needed() -> None:
    n = stats.baseline_needed(0.01)
    assert stats.clopper_pearson_upper(0, n) <= 0.01 < stats.clopper_pearson_upper(0, n - 1)
