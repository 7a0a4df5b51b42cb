"""Canonical encoding and the hash chain shared by the evidence store and the bundles.

A record's hash covers its header fields plus the SHA-256 of its request and response
texts, never the texts themselves. So a bundle exported without ``--reveal`` drops the
texts (which may hold key text or the decryption) and still verifies; a revealed export
carries the texts and the verifier checks them against their hashes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

GENESIS = "0" * 64

# Fields covered by the record hash, in this order. Everything else is derived or payload.
HASHED_FIELDS: tuple[str, ...] = (
    "seq",
    "prev_hash",
    "ts",
    "audit_id",
    "endpoint_id",
    "query_id",
    "category",  # "key" | "control" | "decoy"
    "prompt_id",  # key id (k007), control id (c012) or decoy id (d045); never key text
    "sample_index",
    "attempt",
    "final",  # True when this is the last attempt of its query (success or terminal error)
    "outcome",  # "ok" | "error" | "quarantined"
    "hit",  # bool | None: the response carried the decryption
    "match_kind",  # "exact" | "contains" | "normalized" | "fuzzy" | None
    "refused",  # bool | None: the response looks like a refusal
    "error_type",
    "error_status",
    "latency_s",
    "model",  # resolved model name reported by the server
    "params",  # sampling parameters (mapping)
    "usage",  # token usage (mapping)
    "request_sha256",
    "response_sha256",
)


def canonical(value: Any) -> bytes:
    """Deterministic JSON: sorted keys, no whitespace, UTF-8, floats by repr."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def sha256_hex(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()


def text_hash(value: Any) -> str:
    """Hash of a request or response payload (a string or a JSON-able value)."""
    if value is None:
        return sha256_hex(b"")
    if isinstance(value, str):
        return sha256_hex(value)
    return sha256_hex(canonical(value))


def record_hash(record: Mapping[str, Any]) -> str:
    header = {name: record.get(name) for name in HASHED_FIELDS}
    return sha256_hex(canonical(header))


@dataclass(frozen=True)
class ChainCheck:
    ok: bool
    count: int
    head: str  # hash of the last record (the chain root quoted in reports)
    first_bad_seq: int | None = None
    reason: str = ""


def verify_records(records: Iterable[Mapping[str, Any]]) -> ChainCheck:
    """Check sequence, links, hashes and (when present) payload texts of records in order."""
    prev = GENESIS
    count = 0
    for expected_seq, rec in enumerate(records, start=1):
        count = expected_seq
        seq = rec.get("seq")
        if seq != expected_seq:
            return ChainCheck(False, count, prev, expected_seq,
                              f"record {expected_seq}: sequence number is {seq} "
                              "(record missing, inserted or reordered)")
        if rec.get("prev_hash") != prev:
            return ChainCheck(False, count, prev, expected_seq,
                              f"record {expected_seq}: previous-hash link is broken")
        if record_hash(rec) != rec.get("hash"):
            return ChainCheck(False, count, prev, expected_seq,
                              f"record {expected_seq}: content does not match its hash")
        for text_field, hash_field in (("request", "request_sha256"),
                                       ("response", "response_sha256")):
            if text_field in rec and text_hash(rec[text_field]) != rec.get(hash_field):
                return ChainCheck(False, count, prev, expected_seq,
                                  f"record {expected_seq}: {text_field} does not match its hash")
        prev = str(rec["hash"])
    return ChainCheck(True, count, prev)
