"""Token and cost estimates from the price table in auditor/data/prices.toml."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

from auditor.errors import UserError

if TYPE_CHECKING:
    from auditor.plan import Plan


@dataclass(frozen=True)
class Price:
    input: float  # USD per million tokens
    output: float


@dataclass(frozen=True)
class Estimate:
    queries: int
    input_tokens: int
    output_tokens: int  # upper bound: max_tokens per query
    cost_usd: float | None  # None when the price is unknown


def load_prices() -> dict[str, Price]:
    try:
        text = resources.files("auditor").joinpath("data/prices.toml").read_text("utf-8")
        table = tomllib.loads(text)
        return {spec: Price(float(v["input"]), float(v["output"])) for spec, v in table.items()}
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as exc:
        raise UserError(f"price table auditor/data/prices.toml is unreadable: {exc}") from exc


def price_for(spec: str, prices: dict[str, Price] | None = None) -> Price | None:
    table = load_prices() if prices is None else prices
    kind = spec.partition(":")[0].lower()
    return table.get(spec) or table.get(f"{kind}:*")


def estimate_tokens(text: str) -> int:
    """Rough count: ~4 ASCII characters per token, one token per other character."""
    ascii_chars = sum(1 for ch in text if ord(ch) < 128)
    return max(1, ascii_chars // 4 + (len(text) - ascii_chars))


def cost_usd(spec: str, prompt_tokens: int, completion_tokens: int) -> float | None:
    price = price_for(spec)
    if price is None:
        return None
    return (prompt_tokens * price.input + completion_tokens * price.output) / 1e6


def estimate_plan(plan: Plan) -> Estimate:
    """Upper-bound tokens and cost of sending the plan (budget applied)."""
    budget = plan.settings.max_queries or len(plan.queries)
    queries = plan.queries[:budget]
    per_prompt = {pid: sum(estimate_tokens(m["content"]) for m in msgs) + 4 * len(msgs)
                  for pid, msgs in plan.prompts.items()}
    tokens_in = sum(per_prompt[q.prompt_id] for q in queries)
    tokens_out = len(queries) * plan.settings.max_tokens
    return Estimate(len(queries), tokens_in, tokens_out,
                    cost_usd(plan.endpoint.spec, tokens_in, tokens_out))
