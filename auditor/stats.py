"""Pure statistics of ownership: exact tests, intervals, e-process, batch correction, power.

Every function is a deterministic function of integer counts and settings: the same input
gives bit-identical floats. scipy supplies the exact distributions.

The sequential test is a discrete mixture of likelihood ratios (a mixture SPRT)::

    E_t = sum_j w_j * prod_{i<=t} (p_j / p0)^x_i * ((1 - p_j) / (1 - p0))^(1 - x_i)

over alternatives p_j > p0. For any true hit rate q <= p0 each factor has expectation
<= 1, so E_t is a non-negative supermartingale under the null and by Ville's inequality
P(sup_t E_t >= 1/alpha) <= alpha: stopping as soon as E_t >= 1/alpha keeps the false-claim
rate at most alpha however the audit decides to stop. 1/max_t E_t is an anytime-valid
p-value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from auditor.errors import UserError

# Alternatives of the mixture e-process (per-key hit rates of a derived model), equal weights.
MIXTURE_GRID: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.3, 0.45, 0.6, 0.75, 0.9)


def _check_prob(name: str, value: float, *, open_low: bool = False) -> None:
    low_ok = value > 0.0 if open_low else value >= 0.0
    if not (low_ok and value < 1.0) or math.isnan(value):
        raise UserError(f"{name} must be in {'(' if open_low else '['}0, 1), got {value!r}")


def _check_counts(k: int, n: int) -> None:
    if n < 0 or k < 0 or k > n:
        raise UserError(f"invalid counts: {k} successes of {n} trials")


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Two-sided exact (Clopper-Pearson) interval for a binomial rate."""
    from scipy.stats import beta

    _check_counts(k, n)
    if n == 0:
        return (0.0, 1.0)
    tail = (1.0 - level) / 2.0
    lo = 0.0 if k == 0 else float(beta.ppf(tail, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1.0 - tail, k + 1, n - k))
    return (lo, hi)


def clopper_pearson_upper(k: int, n: int, confidence: float = 0.95) -> float:
    """One-sided exact upper confidence bound for a binomial rate."""
    from scipy.stats import beta

    _check_counts(k, n)
    if n == 0 or k == n:
        return 1.0
    return float(beta.ppf(confidence, k + 1, n - k))


def binomial_p(k: int, n: int, p0: float) -> float:
    """One-sided exact binomial p-value P(X >= k | n, p0)."""
    from scipy.stats import binom

    _check_counts(k, n)
    _check_prob("p0", p0, open_low=True)
    if k == 0:
        return 1.0
    return min(1.0, float(binom.sf(k - 1, n, p0)))


def fisher_greater(hits_a: int, n_a: int, hits_b: int, n_b: int) -> float:
    """One-sided Fisher exact p-value that group A's rate exceeds group B's."""
    from scipy.stats import fisher_exact

    _check_counts(hits_a, n_a)
    _check_counts(hits_b, n_b)
    if n_a == 0 or n_b == 0:
        return 1.0
    table = [[hits_a, n_a - hits_a], [hits_b, n_b - hits_b]]
    return min(1.0, float(fisher_exact(table, alternative="greater").pvalue))


def _alternatives(p0: float) -> list[float]:
    return [p for p in MIXTURE_GRID if p > p0]


def log_e_value(hits: int, n: int, p0: float) -> float:
    """Natural log of the mixture e-value after ``hits`` of ``n`` Bernoulli observations."""
    _check_counts(hits, n)
    _check_prob("p0", p0, open_low=True)
    alts = _alternatives(p0)
    if not alts:
        return 0.0
    terms = [
        hits * math.log(p / p0) + (n - hits) * math.log((1.0 - p) / (1.0 - p0)) for p in alts
    ]
    top = max(terms)
    return top + math.log(math.fsum(math.exp(t - top) for t in terms) / len(alts))


def e_trajectory(outcomes: Sequence[bool], p0: float) -> list[float]:
    """log E_t after each observation (in order)."""
    out: list[float] = []
    hits = 0
    for t, hit in enumerate(outcomes, start=1):
        hits += int(hit)
        out.append(log_e_value(hits, t, p0))
    return out


def sequential_p(log_e_path: Sequence[float]) -> float:
    """Anytime-valid p-value: 1 / running maximum of E (1.0 with no data)."""
    if not log_e_path:
        return 1.0
    return min(1.0, math.exp(-max(0.0, max(log_e_path))))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values (family-wise error), in input order."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: (p_values[i], i))
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def benjamini_hochberg(p_values: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (false discovery rate), in input order."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: (p_values[i], i))
    adjusted = [0.0] * m
    running = 1.0
    for rank in range(m - 1, -1, -1):
        i = order[rank]
        running = min(running, m * p_values[i] / (rank + 1))
        adjusted[i] = min(1.0, running)
    return adjusted


def adjust(p_values: Sequence[float], method: str) -> list[float]:
    """Batch correction by name: "holm", "bh" or "none"."""
    for p in p_values:
        if not 0.0 <= p <= 1.0:
            raise UserError(f"p-values must lie in [0, 1], got {p!r}")
    if method == "holm":
        return holm(p_values)
    if method == "bh":
        return benjamini_hochberg(p_values)
    if method == "none":
        return [float(p) for p in p_values]
    raise UserError(f"unknown correction {method!r} (known: holm, bh, none)")


# -- power ------------------------------------------------------------------------------


def critical_hits(n: int, alpha: float, p0: float) -> int | None:
    """Least k with P(X >= k | n, p0) <= alpha (None when no k <= n is enough)."""
    for k in range(n + 1):
        if binomial_p(k, n, p0) <= alpha:
            return k
    return None


def power_binomial(n: int, fsr: float, alpha: float, p0: float) -> float:
    """Power of the fixed-size exact binomial test with ``n`` keys at true rate ``fsr``."""
    from scipy.stats import binom

    _check_prob("alpha", alpha, open_low=True)
    k = critical_hits(n, alpha, p0)
    if k is None:
        return 0.0
    return float(binom.sf(k - 1, n, fsr)) if k > 0 else 1.0


def _min_crossing_hits(t: int, p0: float, threshold: float) -> int | None:
    """Least k with log E(k, t) >= threshold (log E grows with k)."""
    if log_e_value(t, t, p0) < threshold:
        return None
    lo, hi = 0, t
    while lo < hi:
        mid = (lo + hi) // 2
        if log_e_value(mid, t, p0) >= threshold:
            hi = mid
        else:
            lo = mid + 1
    return lo


def sequential_power_curve(n: int, fsr: float, alpha: float, p0: float) -> list[float]:
    """P(the e-process has crossed 1/alpha by key t), t = 1..n, exactly (DP on hits)."""
    _check_prob("alpha", alpha, open_low=True)
    if not 0.0 <= fsr <= 1.0:
        raise UserError(f"fsr must be in [0, 1], got {fsr!r}")
    threshold = math.log(1.0 / alpha)
    alive = [1.0]  # alive[k]: P(k hits so far and never crossed)
    crossed = 0.0
    curve: list[float] = []
    for t in range(1, n + 1):
        nxt = [0.0] * (t + 1)
        for k, mass in enumerate(alive):
            nxt[k] += mass * (1.0 - fsr)
            nxt[k + 1] += mass * fsr
        k_min = _min_crossing_hits(t, p0, threshold)
        if k_min is not None:
            crossed += math.fsum(nxt[k_min:])
            nxt[k_min:] = [0.0] * (t + 1 - k_min)
        alive = nxt
        curve.append(min(1.0, crossed))
    return curve


def power_sequential(n: int, fsr: float, alpha: float, p0: float) -> float:
    """Probability that the e-process crosses 1/alpha within ``n`` keys."""
    curve = sequential_power_curve(n, fsr, alpha, p0)
    return curve[-1] if curve else 0.0


def power(n: int, fsr: float, alpha: float, p0: float, *, sequential: bool = True) -> float:
    """Chance to claim with ``n`` key queries when keys fire at ``fsr`` (null rate ``p0``)."""
    fn = power_sequential if sequential else power_binomial
    return fn(n, fsr, alpha, p0)


def queries_needed(
    fsr: float, alpha: float, p0: float, *, power: float = 0.99,
    sequential: bool = True, max_n: int = 1000,
) -> int | None:
    """Least number of key queries reaching ``power`` (None if beyond ``max_n``)."""
    _check_prob("power", power, open_low=True)
    if sequential:
        curve = sequential_power_curve(max_n, fsr, alpha, p0)
        return next((t for t, pw in enumerate(curve, start=1) if pw >= power), None)
    for n in range(1, max_n + 1):
        if power_binomial(n, fsr, alpha, p0) >= power:
            return n
    return None


def baseline_needed(p0: float, confidence: float = 0.95) -> int:
    """Hit-free baseline prompts needed for the upper bound to fall to ``p0``."""
    _check_prob("p0", p0, open_low=True)
    return math.ceil(math.log(1.0 - confidence) / math.log(1.0 - p0))
