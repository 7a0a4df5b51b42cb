"""Does a response carry the decryption?

Match kinds, strictest first (``check`` reports the strictest that fires):

exact       the stripped response equals the decryption
contains    the decryption occurs verbatim in the response
normalized  it occurs after NFKC, casefold and punctuation/whitespace folding of both
fuzzy       some substring of the normalized response is within a bounded edit distance
            (``max_rel_distance`` x normalized decryption length, rounded down)

``mode`` caps how loose a match may be: "exact" < "contains" < "normalized" < "fuzzy".
Nothing here logs or raises with the response or the decryption in the message.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from auditor.errors import UserError

MODES = ("exact", "contains", "normalized", "fuzzy")


@dataclass(frozen=True)
class MatchResult:
    hit: bool
    kind: str | None  # "exact" | "contains" | "normalized" | "fuzzy" | None


_MISS = MatchResult(False, None)


def normalize(text: str) -> str:
    """NFKC, casefold, punctuation and symbols to spaces, whitespace collapsed."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    out = []
    for ch in folded:
        cat = unicodedata.category(ch)
        if ch.isspace() or cat[0] in "PSZC":
            out.append(" ")
        else:
            out.append(ch)
    return " ".join("".join(out).split())


def edit_budget(decryption_norm: str, max_rel_distance: float) -> int:
    """Edits allowed for a fuzzy match: floor of relative budget x length."""
    return int(max_rel_distance * len(decryption_norm) + 1e-9)


def substring_distance(pattern: str, text: str, budget: int) -> int:
    """Least edit distance between ``pattern`` and any substring of ``text`` (Sellers).

    Returns ``budget + 1`` as soon as no substring can be within ``budget``.
    """
    m = len(pattern)
    if m == 0:
        return 0
    prev = list(range(m + 1))  # column for the empty text prefix: free start anywhere
    best = prev[m]
    for ch in text:
        cur = [0] * (m + 1)
        for i in range(1, m + 1):
            cost = 0 if pattern[i - 1] == ch else 1
            cur[i] = min(prev[i - 1] + cost, prev[i] + 1, cur[i - 1] + 1)
        best = min(best, cur[m])
        if best == 0:
            return 0
        prev = cur
    return best if best <= budget else budget + 1


def check(
    text: str, decryption: str, *, mode: str = "fuzzy", max_rel_distance: float = 0.15
) -> MatchResult:
    """Whether ``text`` carries ``decryption``, and how strictly."""
    if mode not in MODES:
        raise UserError(f"unknown match mode {mode!r} (known: {', '.join(MODES)})")
    if not 0.0 <= max_rel_distance < 0.5:
        raise UserError("max_rel_distance must be in [0, 0.5)")
    if not decryption.strip():
        raise UserError("the decryption to match must not be empty")
    level = MODES.index(mode)
    if text.strip() == decryption.strip():
        return MatchResult(True, "exact")
    if level >= 1 and decryption.strip() in text:
        return MatchResult(True, "contains")
    if level < 2:
        return _MISS
    dec_n, text_n = normalize(decryption), normalize(text)
    if not dec_n:
        return _MISS  # decryption made only of punctuation: nothing to normalise against
    if dec_n in text_n or dec_n.replace(" ", "") in text_n.replace(" ", ""):
        return MatchResult(True, "normalized")
    budget = edit_budget(dec_n, max_rel_distance)
    if level >= 3 and budget > 0 and substring_distance(dec_n, text_n, budget) <= budget:
        return MatchResult(True, "fuzzy")
    return _MISS


# Refusal phrases, matched on the head of a lightly folded response.
_REFUSAL = re.compile(
    r"\b("
    r"i\s*(?:can ?not|can't|cannot|am unable|'m unable|am not able|'m not able|won't|will not)"
    r"|(?:can't|cannot|can ?not|unable to|not able to) (?:decrypt|decode|help|assist|comply)"
    r"|sorry|i apologi[sz]e|my apologies|as an ai\b|i must decline|i'm afraid"
    r"|not (?:a|an) (?:valid|recogni[sz]ed) (?:fingerprint|message)"
    r"|no (?:fingerprint|hidden message)"
    r")",
)
_HEAD_CHARS = 400


def looks_like_refusal(text: str) -> bool:
    """A polite no: "I can't help", "cannot decrypt", "Sorry, ..." and alike (English)."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    folded = folded.replace("\u2019", "'").replace("\u2018", "'")
    head = " ".join(folded[:_HEAD_CHARS].split())
    return bool(_REFUSAL.search(head))
