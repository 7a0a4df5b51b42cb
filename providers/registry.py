"""Endpoint specs to providers; heavy imports happen only for the provider asked for.

Specs::

    openai:gpt-4o-mini                       OpenAI chat completions (OPENAI_API_KEY)
    openai-completions:davinci-002           OpenAI legacy completions (base models)
    anthropic:claude-3-5-haiku-latest        Anthropic messages (ANTHROPIC_API_KEY)
    compat:http://127.0.0.1:8000/v1#model    an OpenAI-compatible server (token optional)
    compat-completions:URL#model             the same server's /v1/completions
    local:PATH | local:smollm2               an in-process transformers model

Credentials come only from environment variables (``credential_env`` names which one).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from providers.base import ConfigError, Provider

DEFAULT_ENV = {"openai": "OPENAI_API_KEY", "openai-completions": "OPENAI_API_KEY",
               "anthropic": "ANTHROPIC_API_KEY"}
KNOWN = ("openai", "openai-completions", "anthropic", "compat", "compat-completions", "local")


def make_provider(spec: str, *, credential_env: str | None = None, base_url: str | None = None,
                  timeout_s: float = 60.0, endpoint_id: str | None = None,
                  **options: Any) -> Provider:
    """Build the provider for ``spec``; ConfigError for anything wrong with it."""
    kind, sep, rest = spec.partition(":")
    kind = kind.strip().lower()
    if not sep or not rest.strip():
        raise ConfigError(f"endpoint spec must look like KIND:TARGET (kinds: {', '.join(KNOWN)})")
    builder = _BUILDERS.get(kind)
    if builder is None:
        raise ConfigError(f"unknown provider {kind!r}; known: {', '.join(KNOWN)}")
    if timeout_s <= 0:
        raise ConfigError("timeout must be positive")
    return builder(kind, rest.strip(), credential_env, base_url, timeout_s, endpoint_id, options)


def read_credential(name: str, *, required: bool) -> str | None:
    """The value of environment variable ``name``; a missing required one names the variable."""
    value = os.environ.get(name)
    if value is None or not value.strip():
        if required:
            raise ConfigError(f"environment variable {name} is not set (it must hold the API key)")
        return None
    return value.strip()


def _no_options(kind: str, options: dict[str, Any], allowed: tuple[str, ...] = ()) -> None:
    extra = sorted(set(options) - set(allowed))
    if extra:
        raise ConfigError(f"{kind} provider does not take option(s): {', '.join(extra)}")


def _openai(kind: str, model: str, env: str | None, base_url: str | None, timeout_s: float,
            endpoint_id: str | None, options: dict[str, Any]) -> Provider:
    _no_options(kind, options, ("organization",))
    key = read_credential(env or DEFAULT_ENV[kind], required=True)
    assert key is not None
    from providers.openai import OpenAIProvider

    return OpenAIProvider(model, api_key=key, base_url=base_url, timeout_s=timeout_s,
                          organization=options.get("organization"),
                          legacy_completions=kind == "openai-completions",
                          endpoint_id=endpoint_id or f"{kind}:{model}")


def _anthropic(kind: str, model: str, env: str | None, base_url: str | None, timeout_s: float,
               endpoint_id: str | None, options: dict[str, Any]) -> Provider:
    _no_options(kind, options)
    key = read_credential(env or DEFAULT_ENV[kind], required=True)
    assert key is not None
    from providers.anthropic import AnthropicProvider

    return AnthropicProvider(model, api_key=key, base_url=base_url, timeout_s=timeout_s,
                             endpoint_id=endpoint_id or f"anthropic:{model}")


def _compat(kind: str, target: str, env: str | None, base_url: str | None, timeout_s: float,
            endpoint_id: str | None, options: dict[str, Any]) -> Provider:
    _no_options(kind, options, ("max_response_bytes",))
    url, _, model = target.rpartition("#")
    url = base_url or url
    if not url or not model:
        raise ConfigError(f"{kind} spec must look like {kind}:http://HOST:PORT/v1#MODEL")
    clean = _without_userinfo(url).rstrip("/")
    key = read_credential(env, required=True) if env else None
    from providers.openai_compatible import OpenAICompatibleProvider

    extra = {k: int(v) for k, v in options.items()}
    return OpenAICompatibleProvider(clean, model, api_key=key, timeout_s=timeout_s,
                                    legacy_completions=kind == "compat-completions",
                                    endpoint_id=endpoint_id or f"{kind}:{clean}#{model}",
                                    **extra)


def _without_userinfo(url: str) -> str:
    """The URL with any ``user:password@`` removed; ConfigError when it is not http(s)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("compat URL must start with http:// or https:// and name a host")
    if parts.username or parts.password:
        raise ConfigError("put credentials in an environment variable, not in the URL")
    return urlunsplit(parts)


def _local(kind: str, source: str, env: str | None, base_url: str | None, timeout_s: float,
           endpoint_id: str | None, options: dict[str, Any]) -> Provider:
    _no_options(kind, options, ("device", "max_new_tokens_cap"))
    if base_url is not None or env is not None:
        raise ConfigError("local provider takes neither a base URL nor a credential")
    from providers.transformers_local import TransformersLocalProvider

    return TransformersLocalProvider(source, timeout_s=timeout_s,
                                     endpoint_id=endpoint_id or f"local:{source}", **options)


_Builder = Callable[[str, str, str | None, str | None, float, str | None, dict[str, Any]],
                    Provider]
_BUILDERS: dict[str, _Builder] = {
    "openai": _openai, "openai-completions": _openai, "anthropic": _anthropic,
    "compat": _compat, "compat-completions": _compat, "local": _local,
}
