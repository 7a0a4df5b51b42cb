"""From evidence records to an ownership analysis (the statistics behind a verdict).

Unit of evidence is the prompt (a key, a control key or a decoy), not the sample: the
publisher randomised keys, and samples of one prompt are not independent. A prompt's
samples make one prompt-level hit by ``key_rule`` ("any" or "majority" of its answered
samples).

Null hypothesis: the endpoint is independent of the committed secret, so a key fires only
by chance, with probability at most ``p0 = max(floor, one-sided Clopper-Pearson upper bound
of the baseline hit rate)``. The baseline is the decoys, plus the control keys when the
decryption is public (then a one-sided Fisher test of keys vs controls runs too and the
verdict uses the larger p-value). With a secret decryption, firing controls cannot come
from chance; they are reported as over-generalisation, not used against the claim.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from auditor import stats
from auditor.errors import UserError

CATEGORIES = ("key", "control", "decoy")
VERDICTS = ("OWNED", "NOT DETECTED", "SUSPECTED FILTERING", "ERROR")
P0_CAP = 0.999  # keeps the tests defined when the baseline says nothing


@dataclass(frozen=True)
class AnalysisSettings:
    alpha: float = 0.01
    # Floor of p0, the chance a key of an unrelated endpoint fires. The decryption is a
    # CSPRNG draw (48 bits for generated sets) that an unrelated model emits with
    # negligible probability; 1e-3 per key leaves room for matcher false positives and
    # unknown unknowns (1 chance hit per 1,000 keys) while 2 hits of 40 keys still prove.
    floor: float = 1e-3
    key_rule: str = "any"  # or "majority"
    decryption_public: bool = False
    sequential: bool = True
    p0_confidence: float = 0.95  # one-sided level of the baseline's upper bound
    ci_level: float = 0.95  # two-sided level of reported intervals
    filtering_alpha: float = 0.05  # level of the refusal/error gap that flags filtering

    def __post_init__(self) -> None:
        for name in ("alpha", "floor", "p0_confidence", "ci_level", "filtering_alpha"):
            value = getattr(self, name)
            if not isinstance(value, float | int) or not 0.0 < value < 1.0:
                raise UserError(f"analysis setting {name} must be in (0, 1), got {value!r}")
        if self.key_rule not in ("any", "majority"):
            raise UserError(f"key_rule must be 'any' or 'majority', got {self.key_rule!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AnalysisSettings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"unknown analysis settings: {', '.join(unknown)}")
        return cls(**dict(data))


@dataclass(frozen=True)
class Analysis:
    settings: dict[str, Any]
    counts: dict[str, dict[str, int]]  # category -> prompts, samples, hits, refusals, errors
    per_key: dict[str, tuple[int, int]]  # key id -> (hit samples, answered samples)
    keys_answered: int
    keys_hit: int
    baseline: tuple[int, int]  # prompt-level (hits, answered) of the baseline
    p0: float
    p_value: float  # the one the verdict uses
    p_binomial: float
    p_sequential: float
    p_fisher: float | None
    e_value: float  # final mixture e-value (capped at 1e300)
    log_e_max: float
    fsr: float | None
    fsr_ci: tuple[float, float]
    control_rate: float | None
    control_ci: tuple[float, float]
    over_generalization: bool
    filtering_p: float
    filtering_flag: bool
    verdict: str
    claim_reached: bool
    trajectory: list[tuple[int, int, float]] = field(default_factory=list)  # (keys, hits, logE)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["per_key"] = {k: list(v) for k, v in self.per_key.items()}
        for name in ("baseline", "fsr_ci", "control_ci"):
            data[name] = list(getattr(self, name))
        data["trajectory"] = [list(t) for t in self.trajectory]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Analysis:
        try:
            d = dict(data)
            d["per_key"] = {str(k): (int(v[0]), int(v[1])) for k, v in d["per_key"].items()}
            for name in ("baseline", "fsr_ci", "control_ci"):
                d[name] = tuple(d[name])
            d["trajectory"] = [(int(a), int(b), float(c)) for a, b, c in d["trajectory"]]
            return cls(**d)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise UserError(f"malformed analysis data ({type(exc).__name__})") from None


@dataclass
class _Prompt:
    category: str
    first_seq: int
    last_seq: int = 0
    samples: int = 0  # final ok + error records
    ok: int = 0
    hits: int = 0
    refusals: int = 0
    errors: int = 0


def _collect(records: Iterable[Mapping[str, Any]]) -> dict[str, _Prompt]:
    prompts: dict[str, _Prompt] = {}
    for rec in records:
        if not rec.get("final") or rec.get("outcome") not in ("ok", "error"):
            continue  # retried attempts and quarantined queries do not count
        cat, pid, seq = rec.get("category"), rec.get("prompt_id"), rec.get("seq")
        if cat not in CATEGORIES or not isinstance(pid, str) or not isinstance(seq, int):
            raise UserError(f"evidence record {seq!r} has a bad category or prompt id")
        p = prompts.setdefault(f"{cat}:{pid}", _Prompt(cat, seq))
        if p.category != cat:
            raise UserError(f"prompt {pid} appears under two categories")
        p.last_seq = max(p.last_seq, seq)
        p.first_seq = min(p.first_seq, seq)
        p.samples += 1
        if rec.get("outcome") == "error":
            p.errors += 1
            continue
        p.ok += 1
        p.hits += int(rec.get("hit") is True)
        p.refusals += int(rec.get("refused") is True)
    return prompts


def _fires(p: _Prompt, rule: str) -> bool:
    return p.hits > 0 if rule == "any" else 2 * p.hits > p.ok


def _answered(p: _Prompt) -> bool:
    return p.hits > 0 or p.ok > p.refusals  # at least one real answer


def _counts(prompts: dict[str, _Prompt], rule: str) -> dict[str, dict[str, int]]:
    out = {c: {"prompts": 0, "samples": 0, "hits": 0, "hit_samples": 0, "refusals": 0,
               "errors": 0} for c in CATEGORIES}
    for p in prompts.values():
        row = out[p.category]
        row["prompts"] += 1
        row["samples"] += p.samples
        row["hits"] += int(p.ok > 0 and _fires(p, rule))
        row["hit_samples"] += p.hits
        row["refusals"] += p.refusals
        row["errors"] += p.errors
    return out


def _rate(hits: int, n: int, level: float) -> tuple[float | None, tuple[float, float]]:
    return (hits / n if n else None), stats.clopper_pearson(hits, n, level)


def _filtering(prompts: list[_Prompt]) -> tuple[float, list[str]]:
    """Two gaps, Bonferroni-combined: (A) keys unanswered (refused or failed) more often than
    controls of the same style (or decoys when there are none): an innocent model treats
    keys and controls alike; (B) key-like prompts (keys and controls) failing with errors
    more often than decoys: a guard that blocks fingerprint-looking requests."""
    keys = [p for p in prompts if p.category == "key"]
    ctrls = [p for p in prompts if p.category == "control"]
    decoys = [p for p in prompts if p.category == "decoy"]
    ref_name, ref = ("controls", ctrls) if ctrls else ("decoys", decoys)
    k_bad = sum(not _answered(p) for p in keys)
    r_bad = sum(not _answered(p) for p in ref)
    p_a = stats.fisher_greater(k_bad, len(keys), r_bad, len(ref))
    like = keys + ctrls
    l_err = sum(p.errors == p.samples for p in like)
    d_err = sum(p.errors == p.samples for p in decoys)
    p_b = stats.fisher_greater(l_err, len(like), d_err, len(decoys))
    notes = [f"filtering check: keys {k_bad}/{len(keys)} unanswered vs {ref_name} "
             f"{r_bad}/{len(ref)}; key-like prompts failed {l_err}/{len(like)} vs decoys "
             f"{d_err}/{len(decoys)}"]
    return min(1.0, 2.0 * min(p_a, p_b)), notes


def analyze(records: Iterable[Mapping[str, Any]], settings: AnalysisSettings) -> Analysis:
    """The statistics of one endpoint's evidence (same records => bit-identical result)."""
    s = settings
    prompts = _collect(records)
    ordered = sorted(prompts.items(), key=lambda kv: (kv[1].last_seq, kv[0]))
    keys = [(pid.split(":", 1)[1], p) for pid, p in ordered if p.category == "key"]
    answered = [(kid, p) for kid, p in keys if p.ok > 0]
    outcomes = [_fires(p, s.key_rule) for _, p in answered]
    keys_hit = sum(outcomes)
    base_cats = ("decoy", "control") if s.decryption_public else ("decoy",)
    base = [p for _, p in ordered if p.category in base_cats and p.ok > 0]
    base_hits = sum(_fires(p, s.key_rule) for p in base)
    p0 = min(P0_CAP, max(s.floor, stats.clopper_pearson_upper(base_hits, len(base),
                                                               s.p0_confidence)))
    notes: list[str] = []
    if not base:
        notes.append("no answered baseline prompts: p0 is bounded by nothing but the cap")
    log_path = stats.e_trajectory(outcomes, p0)
    p_bin = stats.binomial_p(keys_hit, len(answered), p0)
    p_seq = stats.sequential_p(log_path)
    ctrl = [p for _, p in ordered if p.category == "control" and p.ok > 0]
    ctrl_hits = sum(_fires(p, s.key_rule) for p in ctrl)
    p_fisher = (stats.fisher_greater(keys_hit, len(answered), ctrl_hits, len(ctrl))
                if s.decryption_public else None)
    p_value = p_seq if s.sequential else p_bin
    if p_fisher is not None:
        p_value = max(p_value, p_fisher)
    fsr, fsr_ci = _rate(keys_hit, len(answered), s.ci_level)
    ctrl_rate, ctrl_ci = _rate(ctrl_hits, len(ctrl), s.ci_level)
    over = ctrl_hits > 0 and not s.decryption_public
    if over:
        notes.append(f"{ctrl_hits} of {len(ctrl)} control keys fired: the fingerprint is "
                     "guessable by a derived model (over-generalisation)")
    filt_p, filt_notes = _filtering([p for _, p in ordered])
    notes.extend(filt_notes)
    filt_flag = filt_p <= s.filtering_alpha
    log_e = log_path[-1] if log_path else 0.0
    verdict = _verdict(len(answered), p_value, filt_flag, s.alpha)
    return Analysis(
        settings=s.to_dict(), counts=_counts(prompts, s.key_rule),
        per_key={kid: (p.hits, p.ok) for kid, p in sorted(keys)},
        keys_answered=len(answered), keys_hit=keys_hit, baseline=(base_hits, len(base)),
        p0=p0, p_value=p_value, p_binomial=p_bin, p_sequential=p_seq, p_fisher=p_fisher,
        e_value=math.exp(min(log_e, 690.0)), log_e_max=max([0.0, *log_path]),
        fsr=fsr, fsr_ci=fsr_ci, control_rate=ctrl_rate, control_ci=ctrl_ci,
        over_generalization=over, filtering_p=filt_p, filtering_flag=filt_flag,
        # Anytime-valid only in sequential mode: the engine may stop on it.
        verdict=verdict, claim_reached=verdict == "OWNED" and s.sequential,
        trajectory=_trajectory(outcomes, log_path),
        notes=notes,
    )


def _trajectory(outcomes: list[bool], log_path: list[float]) -> list[tuple[int, int, float]]:
    out: list[tuple[int, int, float]] = []
    hits = 0
    for t, (hit, lv) in enumerate(zip(outcomes, log_path, strict=True), start=1):
        hits += int(hit)
        out.append((t, hits, lv))
    return out


def _verdict(keys_answered_or_errored: int, p_value: float, filtering: bool,
             alpha: float) -> str:
    if p_value <= alpha:
        return "OWNED"
    if filtering:
        return "SUSPECTED FILTERING"
    if keys_answered_or_errored == 0:
        return "ERROR"
    return "NOT DETECTED"
