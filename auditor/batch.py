"""Batch audits: a TOML file of endpoints → one audit each, all running concurrently.

File shape::

    [defaults]                      # optional; any endpoint field, plus `keys`
    keys = "keys/demo.json"
    concurrency = 8
    rpm = 600

    [[endpoint]]
    name = "acme-prod"
    provider = "openai"             # with `model`; or `spec = "compat:http://h/v1#m"`
    model = "gpt-4o-mini"
    credential_env = "ACME_API_KEY"
    max_queries = 200

One endpoint's failure (auth, DNS, only errors) makes that endpoint ERROR; the others go on.
"""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from auditor.audit import (
    AuditResult,
    Listener,
    check_endpoint,
    check_keyset_matches,
    preload,
    run_audit,
    unfinished,
)
from auditor.errors import UserError
from auditor.evidence import EvidenceStore, utc_now
from auditor.finish import Finished
from auditor.plan import CampaignSettings, EndpointConfig, Plan, build_plan, new_audit_id
from auditor.writer import GroupWriter

if TYPE_CHECKING:
    from auditor.keys import KeySet
    from auditor.retry import RetryPolicy

_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,), "spec": (str,), "provider": (str,), "model": (str,), "base_url": (str,),
    "credential_env": (str,), "keys": (str,), "concurrency": (int,), "rpm": (int, float),
    "max_queries": (int,), "temperature": (int, float), "system_prompt": (str,),
    "timeout_s": (int, float), "samples": (int,),
}


@dataclass(frozen=True)
class BatchEntry:
    endpoint: EndpointConfig
    key_file: str
    max_queries: int | None = None
    temperature: float | None = None
    system_prompt: str | None = None
    samples: int | None = None  # samples per prompt (e.g. several when sampling at t > 0)

    def settings(self, base: CampaignSettings) -> CampaignSettings:
        s = base
        if self.samples is not None:
            s = replace(s, samples=self.samples)
        if self.max_queries is not None:
            s = replace(s, max_queries=self.max_queries)
        if self.temperature is not None:
            s = replace(s, temperatures=(float(self.temperature),))
        if self.system_prompt is not None:
            s = replace(s, system_prompt=self.system_prompt)
        return s


def _check_fields(table: Mapping[str, Any], where: str) -> None:
    for field_name, value in table.items():
        types = _TYPES.get(field_name)
        if types is None:
            raise UserError(f"{where}: unknown field {field_name!r} "
                            f"(known: {', '.join(sorted(_TYPES))})")
        if isinstance(value, bool) or not isinstance(value, types):
            raise UserError(f"{where}: field {field_name!r} must be "
                            f"{' or '.join(t.__name__ for t in types)}")


def _entry(raw: Mapping[str, Any], where: str, default_keys: str | None) -> BatchEntry:
    spec = raw.get("spec")
    if spec is None:
        if "provider" not in raw or "model" not in raw:
            raise UserError(f"{where}: give `spec`, or `provider` and `model`")
        spec = f"{raw['provider']}:{raw['model']}"
    elif "provider" in raw:
        raise UserError(f"{where}: give either `spec` or `provider`, not both")
    keys = raw.get("keys", default_keys)
    if keys is None:
        raise UserError(f"{where}: no key file (`keys` here, in [defaults], or --keys)")
    try:
        ep = EndpointConfig(
            name=str(raw.get("name", spec)), spec=str(spec), base_url=raw.get("base_url"),
            credential_env=raw.get("credential_env"),
            concurrency=int(raw.get("concurrency", 8)),
            rpm=float(raw["rpm"]) if "rpm" in raw else None,
            timeout_s=float(raw.get("timeout_s", 60.0)))
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
    if "max_queries" in raw and raw["max_queries"] < 1:
        raise UserError(f"{where}: max_queries must be at least 1")
    temp = raw.get("temperature")
    if temp is not None and not 0.0 <= float(temp) <= 2.0:
        raise UserError(f"{where}: temperature must be between 0 and 2")
    if "samples" in raw and raw["samples"] < 1:
        raise UserError(f"{where}: samples must be at least 1")
    return BatchEntry(ep, str(keys), raw.get("max_queries"),
                      float(temp) if temp is not None else None, raw.get("system_prompt"),
                      raw.get("samples"))


def load_batch(path: Path, default_keys: str | None = None) -> list[BatchEntry]:
    """Parse and validate an endpoints file; UserError names the file and field."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"{path}: not a readable TOML file ({exc})") from None
    extra = set(data) - {"defaults", "endpoint"}
    if extra:
        raise UserError(f"{path}: unknown table(s) {', '.join(sorted(extra))}")
    defaults = data.get("defaults", {})
    endpoints = data.get("endpoint", [])
    if not isinstance(defaults, dict) or not isinstance(endpoints, list) or not endpoints:
        raise UserError(f"{path}: needs at least one [[endpoint]] table")
    _check_fields(defaults, f"{path}: [defaults]")
    if "name" in defaults:
        raise UserError(f"{path}: [defaults]: `name` must be set per endpoint")
    entries: list[BatchEntry] = []
    for i, raw in enumerate(endpoints):
        where = f"{path}: endpoint #{i + 1}" + (f" ({raw['name']})" if "name" in raw else "")
        _check_fields(raw, where)
        entries.append(_entry({**defaults, **raw}, where, default_keys))
    names = [e.endpoint.name for e in entries]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UserError(f"{path}: endpoint names must be unique (repeated: {', '.join(dupes)})")
    return entries


def stopping_settings(base: CampaignSettings, endpoints: int) -> CampaignSettings:
    """``base`` with each endpoint stopping early at alpha/m for a batch of m endpoints.

    A claim that clears alpha/m also clears the batch's Holm (or BH) correction at alpha;
    stopping at alpha itself can leave a claim short after the correction.
    """
    return replace(base, alpha=base.alpha / max(1, endpoints))


def load_keysets(entries: list[BatchEntry]) -> dict[str, KeySet]:
    from auditor.keys import KeySet

    return {path: KeySet.load(path) for path in dict.fromkeys(e.key_file for e in entries)}


def prepare(entries: list[BatchEntry], keysets: Mapping[str, KeySet], base: CampaignSettings,
            store: EvidenceStore, *, resume: bool = True) -> list[tuple[Plan, KeySet]]:
    """A plan per endpoint: an unfinished audit of the same endpoint and keys, or a new one."""
    for e in entries:  # every spec and credential checked before any audit is created
        check_endpoint(e.endpoint)
    plans: list[tuple[Plan, KeySet]] = []
    for e in entries:
        ks = keysets[e.key_file]
        digest = str(ks.commitment()["digest"])
        previous = unfinished(store, e.endpoint.name, digest) if resume else []
        if previous:
            plan = Plan.from_dict(store.audit(previous[-1]).plan)
            check_keyset_matches(plan, ks)
        else:
            plan = build_plan(new_audit_id(e.endpoint.name), e.endpoint, ks, e.key_file,
                              e.settings(base))
            store.create_audit(plan.audit_id, e.endpoint.name, plan.to_dict())
        plans.append((plan, ks))
    return plans


async def _guarded(plan: Plan, keyset: KeySet, store: EvidenceStore, policy: RetryPolicy | None,
                   listener: Listener | None, writer: GroupWriter) -> AuditResult:
    """Run one endpoint; any unexpected failure becomes that endpoint's ERROR."""
    try:
        return await run_audit(plan, keyset, store, policy=policy, listener=listener,
                               writer=writer)
    except (asyncio.CancelledError, KeyboardInterrupt):
        raise
    except Exception as exc:  # isolate: never let one endpoint stop the others
        store.set_status(plan.audit_id, "error")
        now = utc_now()
        return AuditResult(plan.audit_id, plan.endpoint.name, "error", None, now, now,
                           queries=len(store.completed_queries(plan.audit_id)),
                           error=f"{type(exc).__name__}: {exc}", error_kind="internal")


async def run_plans(plans: list[tuple[Plan, KeySet]], store: EvidenceStore, *,
                    policy: RetryPolicy | None = None,
                    listener: Listener | None = None) -> list[Finished]:
    """Every endpoint at once (one group-commit writer); results in the order of ``plans``."""
    preload()
    writer = GroupWriter(store)
    results = await asyncio.gather(*(
        _guarded(p, ks, store, policy, listener, writer) for p, ks in plans))
    return [Finished(p, ks, r) for (p, ks), r in zip(plans, results, strict=True)]
