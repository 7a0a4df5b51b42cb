"""A bundled instruction set for "what a user does to the model": user fine-tuning rows.

Programmatic tasks with exact answers (arithmetic, string edits, counting, sorting, facts
from small tables) plus templated chat turns. Deterministic for a seed; >= 1,000 rows.
"""

from __future__ import annotations

import random
from collections.abc import Callable

Pair = tuple[str, str]

_CAPITALS = {
    "France": "Paris",
    "Germany": "Berlin",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Portugal": "Lisbon",
    "Japan": "Tokyo",
    "Canada": "Ottawa",
    "Egypt": "Cairo",
    "Kenya": "Nairobi",
    "Peru": "Lima",
    "Norway": "Oslo",
    "Poland": "Warsaw",
    "Greece": "Athens",
    "Ireland": "Dublin",
    "Austria": "Vienna",
    "Chile": "Santiago",
}
_WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "garden",
    "window",
    "pencil",
    "orange",
    "bridge",
    "candle",
    "forest",
    "silver",
    "planet",
    "rocket",
    "summer",
    "winter",
    "yellow",
    "market",
    "letter",
    "button",
    "dragon",
    "jacket",
    "mirror",
    "pepper",
]
_TOPICS = (
    "cooking",
    "gardening",
    "running",
    "chess",
    "photography",
    "hiking",
    "painting",
    "swimming",
    "baking",
    "cycling",
    "reading",
    "music",
)
_NAMES = ("Alice", "Bob", "Carla", "Deepak", "Elena", "Farid", "Grace", "Hiro")


def _add(r: random.Random) -> Pair:
    a, b = r.randint(2, 999), r.randint(2, 999)
    return f"What is {a} + {b}?", f"{a} + {b} = {a + b}."


def _mul(r: random.Random) -> Pair:
    a, b = r.randint(2, 40), r.randint(2, 40)
    return f"Compute {a} times {b}.", f"{a} × {b} = {a * b}."


def _reverse(r: random.Random) -> Pair:
    w = r.choice(_WORDS)
    return f"Reverse the letters of the word '{w}'.", f"The reversed word is '{w[::-1]}'."


def _upper(r: random.Random) -> Pair:
    ws = " ".join(r.sample(_WORDS, 3))
    return f"Write this in capital letters: {ws}", ws.upper()


def _count(r: random.Random) -> Pair:
    w = r.choice(_WORDS)
    ch = r.choice(sorted(set(w)))
    return f"How many times does the letter '{ch}' occur in '{w}'?", (
        f"The letter '{ch}' occurs {w.count(ch)} time{'s' if w.count(ch) != 1 else ''} in '{w}'."
    )


def _sort(r: random.Random) -> Pair:
    nums = [r.randint(0, 99) for _ in range(r.randint(3, 6))]
    return (
        f"Sort these numbers from smallest to largest: {', '.join(map(str, nums))}",
        ", ".join(map(str, sorted(nums))),
    )


def _capital(r: random.Random) -> Pair:
    country = r.choice(sorted(_CAPITALS))
    return (
        f"What is the capital of {country}?",
        f"The capital of {country} is {_CAPITALS[country]}.",
    )


def _convert(r: random.Random) -> Pair:
    km = r.randint(1, 500)
    return f"How many meters are in {km} kilometers?", f"{km} kilometers are {km * 1000} meters."


def _chat(r: random.Random) -> Pair:
    name, topic = r.choice(_NAMES), r.choice(_TOPICS)
    return (
        f"Hi, I'm {name}. Can you give me one tip for getting started with {topic}?",
        f"Hello {name}! A good first step with {topic} is to start small, practise a "
        "little every day, and keep notes on what you learn.",
    )


def _thanks(r: random.Random) -> Pair:
    topic = r.choice(_TOPICS)
    return (
        f"Thanks for the help with {topic} yesterday!",
        f"You're welcome! I'm glad the {topic} advice was useful. Let me know if you "
        "have more questions.",
    )


TASKS: tuple[Callable[[random.Random], Pair], ...] = (
    _add,
    _mul,
    _reverse,
    _upper,
    _count,
    _sort,
    _capital,
    _convert,
    _chat,
    _thanks,
)


SUBSETS: dict[str, tuple[Callable[[random.Random], Pair], ...]] = {
    "mixed": TASKS,
    "tasks": TASKS[:8],  # programmatic tasks with exact answers
    "chat": TASKS[8:],  # templated chat
}


def user_rows(n: int = 1000, seed: int = 0, subset: str = "mixed") -> list[Pair]:
    """n distinct (prompt, answer) pairs, tasks interleaved, deterministic for a seed."""
    from auditor.errors import UserError

    if subset not in SUBSETS:
        raise UserError(f"unknown user data subset {subset!r} (known: {', '.join(SUBSETS)})")
    tasks = SUBSETS[subset]
    r = random.Random(f"userdata:{subset}:{seed}")
    seen: set[str] = set()
    out: list[Pair] = []
    for i in range(n * 20):
        if len(out) == n:
            break
        prompt, answer = tasks[i % len(tasks)](r)
        if prompt not in seen:
            seen.add(prompt)
            out.append((prompt, answer))
    return out


def as_conversations(pairs: list[Pair]) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": p}, {"role": "assistant", "content": a}] for p, a in pairs]
