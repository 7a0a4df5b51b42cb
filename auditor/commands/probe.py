"""`auditor probe ENDPOINT "prompt"`: one query through the retry layer, the reply printed.

A user's first smoke test of an endpoint config: reply, resolved model, latency, usage.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from auditor.errors import UserError

if TYPE_CHECKING:
    from auditor.retry import AttemptInfo, RetryPolicy
    from providers.base import Completion, SampleParams


async def run_probe(spec: str, prompt: str, params: SampleParams, policy: RetryPolicy,
                    *, credential_env: str | None = None, base_url: str | None = None,
                    timeout_s: float = 60.0,
                    ) -> tuple[Completion, list[AttemptInfo]]:
    """Send one prompt to ``spec`` with retries; return the completion and every attempt."""
    from auditor.retry import generate_with_retry
    from providers.base import Message
    from providers.registry import make_provider

    provider = make_provider(spec, credential_env=credential_env, base_url=base_url,
                             timeout_s=timeout_s)
    attempts: list[AttemptInfo] = []

    async def record(info: AttemptInfo) -> None:
        attempts.append(info)
        if not info.final and info.error is not None:
            _err_console().print(f"attempt {info.attempt}: {info.error.kind} "
                                 f"({info.error.status or '-'}); retrying in {info.wait_s:.1f} s")

    try:
        completion = await generate_with_retry(provider, [Message("user", prompt)], params,
                                               policy, record)
    finally:
        await provider.aclose()
    return completion, attempts


def _err_console() -> Console:
    return Console(stderr=True, highlight=False)


def _check(temperature: float, max_tokens: int, timeout: float, attempts: int) -> None:
    if not 0.0 <= temperature <= 2.0:
        raise UserError("--temperature must be between 0 and 2")
    if max_tokens < 1:
        raise UserError("--max-tokens must be at least 1")
    if timeout <= 0:
        raise UserError("--timeout must be positive")
    if attempts < 1:
        raise UserError("--attempts must be at least 1")


def _render(completion: Completion, attempts: int, as_json: bool) -> None:
    con = Console(highlight=False)
    info = {"model": completion.model, "finish_reason": completion.finish_reason,
            "latency_s": round(completion.latency_s, 3), "attempts": attempts,
            "request_id": completion.request_id, **completion.usage.to_dict()}
    if as_json:
        con.print_json(json.dumps({"text": completion.text, **info}))
        return
    con.print(completion.text, markup=False, soft_wrap=True)
    table = Table(show_header=False, box=None, pad_edge=False)
    for name, value in info.items():
        table.add_row(f"[dim]{name}[/]", "-" if value is None else str(value))
    con.print(table)


def probe(
    endpoint: Annotated[str, typer.Argument(
        help="openai:MODEL | anthropic:MODEL | compat:URL#MODEL | local:PATH|smollm2")],
    prompt: Annotated[str, typer.Argument(help="The user message to send.")],
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 0.0,
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    max_tokens: Annotated[int, typer.Option(help="Most tokens to generate.")] = 64,
    seed: Annotated[int | None, typer.Option(help="Sampling seed (if supported).")] = None,
    top_p: Annotated[float | None, typer.Option(help="Nucleus sampling mass.")] = None,
    credential_env: Annotated[str | None, typer.Option(
        help="Environment variable holding the API key (default per provider).")] = None,
    base_url: Annotated[str | None, typer.Option(help="Override the API base URL.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds per attempt.")] = 60.0,
    attempts: Annotated[int, typer.Option(help="Most attempts (retries included).")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Send one prompt to an endpoint and print the reply, resolved model, latency and usage."""
    from auditor.retry import RetryPolicy
    from providers.base import ProviderError, SampleParams

    _check(temperature, max_tokens, timeout, attempts)
    params = SampleParams(temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                          seed=seed, system_prompt=system, timeout_s=timeout)
    policy = RetryPolicy(max_attempts=attempts, attempt_timeout_s=timeout,
                         deadline_s=max(timeout * attempts * 2, 60.0))
    try:
        completion, seen = asyncio.run(run_probe(
            endpoint, prompt, params, policy, credential_env=credential_env,
            base_url=base_url, timeout_s=timeout))
    except ProviderError as exc:
        from providers.base import ConfigError

        if isinstance(exc, ConfigError):
            raise
        status = f" (HTTP {exc.status})" if exc.status else ""
        _err_console().print(f"error: {exc.kind}{status}: {exc.message}", markup=False)
        raise typer.Exit(1) from None
    _render(completion, len(seen), as_json)


def register(app: typer.Typer) -> None:
    """Add `probe` to the app."""
    app.command("probe")(probe)
