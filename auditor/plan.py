"""Audit plans: which prompts, how often, in what order; stored so a resume rebuilds them.

A plan holds the endpoint config, the key file path and commitment digest, the campaign
settings, the CSPRNG seed (order, decoy pick and control-key seed all derive from it) and
the planned queries in schedule order. The rendered messages sit in the plan too: it is
kept in the secret evidence store, never printed (``public_dict`` leaves them out).
"""

from __future__ import annotations

import dataclasses
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from auditor.decoys import control_keys, select_decoys
from auditor.errors import UserError
from auditor.schedule import Csprng, new_seed, spread_shuffle

if TYPE_CHECKING:
    from auditor.keys import KeySet

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class EndpointConfig:
    """One endpoint to audit (a row of a batch file, or the `audit` command's options)."""

    name: str  # endpoint id used in evidence and reports
    spec: str  # provider spec, e.g. "openai:gpt-4o-mini" or "compat:http://h/v1#m"
    base_url: str | None = None
    credential_env: str | None = None
    concurrency: int = 8
    rpm: float | None = None  # requests per minute; None = unlimited
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if not self.name.strip() or not self.spec.strip():
            raise UserError("an endpoint needs a name and a provider spec")
        if self.concurrency < 1:
            raise UserError(f"endpoint {self.name}: concurrency must be at least 1")
        if self.rpm is not None and self.rpm <= 0:
            raise UserError(f"endpoint {self.name}: rpm must be positive")
        if self.timeout_s <= 0:
            raise UserError(f"endpoint {self.name}: timeout must be positive")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EndpointConfig:
        return cls(**dict(data))


@dataclass(frozen=True)
class CampaignSettings:
    key_ids: tuple[str, ...] = ()  # empty: every committed key
    controls_per_key: float = 1.0
    decoys_per_key: float = 1.0
    samples: int = 1  # samples per prompt and temperature
    temperatures: tuple[float, ...] = (0.0,)
    max_tokens: int = 64
    system_prompt: str | None = None  # optional wrapper: a system message before each prompt
    max_queries: int | None = None  # budget: stop sending after this many queries
    alpha: float = 0.01
    key_rule: str = "any"
    sequential: bool = True  # stop once the claim is reached

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise UserError("samples per prompt must be at least 1")
        if self.controls_per_key < 0 or self.decoys_per_key < 0:
            raise UserError("control and decoy ratios must be >= 0")
        if not self.temperatures or any(not 0.0 <= t <= 2.0 for t in self.temperatures):
            raise UserError("temperatures must be between 0 and 2")
        if self.max_queries is not None and self.max_queries < 1:
            raise UserError("--max-queries must be at least 1")
        if not 0.0 < self.alpha < 1.0:
            raise UserError("alpha must be between 0 and 1")
        if self.key_rule not in ("any", "majority"):
            raise UserError("key rule must be 'any' or 'majority'")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CampaignSettings:
        d = dict(data)
        d["key_ids"] = tuple(d.get("key_ids", ()))
        d["temperatures"] = tuple(d.get("temperatures", (0.0,)))
        return cls(**d)


@dataclass(frozen=True)
class PlannedQuery:
    query_id: str
    category: str  # "key" | "control" | "decoy"
    prompt_id: str
    sample_index: int
    temperature: float


@dataclass
class Plan:
    audit_id: str
    endpoint: EndpointConfig
    key_file: str
    commitment_digest: str
    settings: CampaignSettings
    seed: str  # CSPRNG seed: schedule, decoy pick, control seed
    control_seed: int
    queries: list[PlannedQuery]
    prompts: dict[str, Messages] = field(repr=False)

    def __repr__(self) -> str:
        return f"Plan(audit_id={self.audit_id!r}, queries={len(self.queries)})"

    def counts(self) -> dict[str, int]:
        out = {"key": 0, "control": 0, "decoy": 0}
        for q in self.queries:
            out[q.category] += 1
        return out

    def public_dict(self) -> dict[str, Any]:
        """Everything but the prompt texts (the seed is revealed after the run)."""
        return {
            "audit_id": self.audit_id, "endpoint": self.endpoint.to_dict(),
            "key_file": self.key_file, "commitment_digest": self.commitment_digest,
            "settings": self.settings.to_dict(), "control_seed": self.control_seed,
            "queries": [dataclasses.asdict(q) for q in self.queries],
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.public_dict(), "seed": self.seed, "prompts": self.prompts}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        return cls(
            audit_id=data["audit_id"], endpoint=EndpointConfig.from_dict(data["endpoint"]),
            key_file=data["key_file"], commitment_digest=data["commitment_digest"],
            settings=CampaignSettings.from_dict(data["settings"]), seed=data["seed"],
            control_seed=int(data["control_seed"]),
            queries=[PlannedQuery(**q) for q in data["queries"]],
            prompts={k: [dict(m) for m in v] for k, v in data["prompts"].items()},
        )


def new_audit_id(endpoint_name: str) -> str:
    """A fresh, filesystem-safe audit id: a<UTC time>-<endpoint slug>-<random>."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", endpoint_name).strip("-")[:24] or "endpoint"
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return f"a{stamp}-{slug}-{secrets.token_hex(3)}"


def _wrap(messages: Messages, system_prompt: str | None) -> Messages:
    if system_prompt is None:
        return messages
    return [{"role": "system", "content": system_prompt}, *messages]


def _user_chars(messages: Messages) -> int:
    return sum(len(m["content"]) for m in messages if m["role"] == "user")


def _select_keys(keyset: KeySet, key_ids: Sequence[str]) -> list[Any]:
    if not key_ids:
        return list(keyset.keys)
    known = {k.id: k for k in keyset.keys}
    missing = [k for k in key_ids if k not in known]
    if missing:
        raise UserError(f"key set {keyset.name!r} has no key(s) {', '.join(missing)}")
    return [known[k] for k in dict.fromkeys(key_ids)]


def build_prompts(keyset: KeySet, settings: CampaignSettings, seed: str
                  ) -> tuple[dict[str, str], dict[str, Messages], int]:
    """Prompt id -> category and messages for keys, controls and decoys."""
    from auditor.templates import get_template

    template = get_template(keyset.template)
    keys = _select_keys(keyset, settings.key_ids)
    control_seed = Csprng(seed, "controls").derive_int()
    n_controls = round(len(keys) * settings.controls_per_key)
    n_decoys = round(len(keys) * settings.decoys_per_key)
    categories: dict[str, str] = {}
    prompts: dict[str, Messages] = {}
    for cat, items in (("key", keys), ("control", control_keys(keyset, n_controls,
                                                                 control_seed))):
        for k in items:
            categories[k.id] = cat
            prompts[k.id] = _wrap(template.render(k.text), settings.system_prompt)
    lengths = [_user_chars(prompts[k.id]) for k in keys]
    for d in select_decoys(lengths, n_decoys, Csprng(seed, "decoys")):
        categories[d.id] = "decoy"
        prompts[d.id] = _wrap([{"role": "user", "content": d.text}], settings.system_prompt)
    return categories, prompts, control_seed


def build_plan(audit_id: str, endpoint: EndpointConfig, keyset: KeySet, key_file: str,
               settings: CampaignSettings, seed: str | None = None) -> Plan:
    """Plan every query of one endpoint's audit, in CSPRNG schedule order."""
    seed = seed or new_seed()
    categories, prompts, control_seed = build_prompts(keyset, settings, seed)
    drafts: list[tuple[str, str, int, float]] = []
    for prompt_id, cat in categories.items():
        for t_index, temp in enumerate(settings.temperatures):
            for s in range(settings.samples):
                drafts.append((cat, prompt_id, t_index * settings.samples + s, temp))
    ordered = spread_shuffle(drafts, lambda d: d[0], Csprng(seed, "schedule"))
    queries = [PlannedQuery(f"q{i:05d}", cat, pid, sidx, temp)
               for i, (cat, pid, sidx, temp) in enumerate(ordered)]
    digest = str(keyset.commitment()["digest"])
    return Plan(audit_id, endpoint, key_file, digest, settings, seed, control_seed,
                queries, prompts)
