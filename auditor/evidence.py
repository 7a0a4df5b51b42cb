"""Append-only, hash-chained evidence store (SQLite, WAL, synchronous=FULL).

One row per attempt. Each audit has its own chain (seq 1.., ``prev_hash`` links, hash from
``auditor.chain.record_hash``). Triggers refuse UPDATE and DELETE on records; the one way
out is the quarantine table (a torn/invalid last record is copied there first, then removed).
The store holds key text in requests, so it is as secret as a key file: mode 0600.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from auditor.chain import GENESIS, HASHED_FIELDS, ChainCheck, record_hash, text_hash, verify_records
from auditor.errors import AuditFailed, UserError

DEFAULT_STORE = Path("reports/evidence.sqlite")

_RECORD_COLUMNS = """
    seq INTEGER NOT NULL, prev_hash TEXT NOT NULL, ts TEXT NOT NULL, audit_id TEXT NOT NULL,
    endpoint_id TEXT NOT NULL, query_id TEXT NOT NULL, category TEXT NOT NULL,
    prompt_id TEXT NOT NULL, sample_index INTEGER NOT NULL, attempt INTEGER NOT NULL,
    final INTEGER NOT NULL, outcome TEXT NOT NULL, hit INTEGER, match_kind TEXT,
    refused INTEGER, error_type TEXT, error_status INTEGER, latency_s REAL, model TEXT,
    params TEXT, usage TEXT, request_sha256 TEXT NOT NULL, response_sha256 TEXT NOT NULL,
    hash TEXT NOT NULL, request TEXT, response TEXT"""

# Named migrations, applied in order, each once (recorded in schema_migrations).
MIGRATIONS: tuple[tuple[str, str], ...] = (
    ("0001_audits_records", f"""
        CREATE TABLE audits (
            audit_id TEXT PRIMARY KEY, endpoint_id TEXT NOT NULL, created TEXT NOT NULL,
            updated TEXT NOT NULL, status TEXT NOT NULL, plan TEXT NOT NULL);
        CREATE TABLE records ({_RECORD_COLUMNS}, PRIMARY KEY (audit_id, seq));
        CREATE INDEX records_query ON records (audit_id, query_id);
    """),
    ("0002_quarantine_and_append_only", f"""
        CREATE TABLE quarantine ({_RECORD_COLUMNS}, reason TEXT NOT NULL,
            quarantined_at TEXT NOT NULL);
        CREATE TRIGGER records_no_update BEFORE UPDATE ON records
        BEGIN SELECT RAISE(ABORT, 'evidence records are append-only'); END;
        CREATE TRIGGER records_no_delete BEFORE DELETE ON records
        WHEN NOT EXISTS (SELECT 1 FROM quarantine q
                         WHERE q.audit_id = OLD.audit_id AND q.seq = OLD.seq
                           AND q.hash = OLD.hash)
        BEGIN SELECT RAISE(ABORT, 'evidence records are append-only'); END;
    """),
)

_BOOL_FIELDS = ("final", "hit", "refused")
_JSON_FIELDS = ("params", "usage")
_ALL_COLUMNS = (*HASHED_FIELDS, "hash", "request", "response")


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class AuditRow:
    audit_id: str
    endpoint_id: str
    created: str
    updated: str
    status: str  # "planned" | "running" | "completed" | "error" | "interrupted"
    plan: dict[str, Any]


@dataclass(frozen=True)
class Quarantined:
    audit_id: str
    seq: int
    reason: str


def _open_private(path: Path) -> None:
    """Create the store file 0600, or refuse an existing one others can read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise UserError(f"evidence store {path} is readable by others (mode {mode:o}); "
                            f"it holds key text: run `chmod 600 {path}`")
        return
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)


_INSERT = (f"INSERT INTO records ({','.join(_ALL_COLUMNS)}) "
           f"VALUES ({','.join('?' * len(_ALL_COLUMNS))})")


def _prepare(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The record minus its chain position: hashed fields, texts and their hashes."""
    request = fields.get("request")
    request_text = request if isinstance(request, str) or request is None else \
        json.dumps(request, sort_keys=True, ensure_ascii=False)
    response = fields.get("response")
    rec = {name: fields.get(name) for name in HASHED_FIELDS}
    rec["request"], rec["response"] = request_text, response
    rec["request_sha256"] = text_hash(request_text)
    rec["response_sha256"] = text_hash(response)
    return rec


def _to_row(rec: Mapping[str, Any]) -> tuple[Any, ...]:
    out: list[Any] = []
    for name in _ALL_COLUMNS:
        value = rec.get(name)
        if name in _BOOL_FIELDS and value is not None:
            value = int(bool(value))
        elif name in _JSON_FIELDS and value is not None:
            value = json.dumps(value, sort_keys=True)
        out.append(value)
    return tuple(out)


def _from_row(row: sqlite3.Row) -> dict[str, Any]:
    rec: dict[str, Any] = {}
    for name in _ALL_COLUMNS:
        value = row[name]
        if name in _BOOL_FIELDS and value is not None:
            value = bool(value)
        elif name in _JSON_FIELDS and value is not None:
            value = json.loads(value)
        rec[name] = value
    return rec


def _audit_row(row: sqlite3.Row) -> AuditRow:
    return AuditRow(row["audit_id"], row["endpoint_id"], row["created"], row["updated"],
                    row["status"], json.loads(row["plan"]))


class EvidenceStore:
    """The store. Use as a context manager or call ``close()``."""

    def __init__(self, path: Path | str = DEFAULT_STORE) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()  # one connection, used by the loop and a writer thread
        _open_private(self.path)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0,
                                       check_same_thread=False)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=30000")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise UserError(f"evidence store {self.path} is not a usable SQLite file: "
                            f"{exc}") from exc

    def __enter__(self) -> EvidenceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    # --- schema ---------------------------------------------------------------------------
    def _migrate(self) -> None:
        self._db.execute("CREATE TABLE IF NOT EXISTS schema_migrations "
                         "(name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
        done = {r[0] for r in self._db.execute("SELECT name FROM schema_migrations")}
        for name, sql in MIGRATIONS:
            if name in done:
                continue
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for statement in _split_sql(sql):
                    self._db.execute(statement)
                self._db.execute("INSERT INTO schema_migrations VALUES (?, ?)",
                                 (name, utc_now()))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _q(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """One statement under the lock, all rows fetched."""
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def migrations(self) -> list[str]:
        return [r[0] for r in self._q("SELECT name FROM schema_migrations ORDER BY name")]

    def pragma(self, name: str) -> Any:
        return self._q(f"PRAGMA {name}")[0][0]

    # --- audits ---------------------------------------------------------------------------
    def create_audit(self, audit_id: str, endpoint_id: str, plan: Mapping[str, Any]) -> None:
        now = utc_now()
        try:
            self._q("INSERT INTO audits VALUES (?, ?, ?, ?, ?, ?)",
                             (audit_id, endpoint_id, now, now, "planned", json.dumps(plan)))
        except sqlite3.IntegrityError as exc:
            raise UserError(f"audit {audit_id} already exists in {self.path}") from exc

    def audit(self, audit_id: str) -> AuditRow:
        row = next(iter(self._q("SELECT * FROM audits WHERE audit_id = ?", (audit_id,))), None)
        if row is None:
            raise UserError(f"no audit {audit_id!r} in {self.path}")
        return _audit_row(row)

    def audits(self, *statuses: str, endpoint_id: str | None = None) -> list[AuditRow]:
        """Audits in creation order, optionally of these statuses / this endpoint (one query)."""
        where, args = [], list(statuses)
        if statuses:
            where.append(f"status IN ({','.join('?' * len(statuses))})")
        if endpoint_id is not None:
            where.append("endpoint_id = ?")
            args.append(endpoint_id)
        sql = "SELECT * FROM audits" + (f" WHERE {' AND '.join(where)}" if where else "")
        return [_audit_row(r) for r in self._q(sql + " ORDER BY created, rowid", args)]

    def set_status(self, audit_id: str, status: str) -> None:
        self._q("UPDATE audits SET status = ?, updated = ? WHERE audit_id = ?",
                         (status, utc_now(), audit_id))

    # --- records --------------------------------------------------------------------------
    def append(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Chain, hash and commit one attempt record; returns the stored record.

        ``fields`` carries the hashed fields except seq/prev_hash/ts/hashes, plus
        ``request`` (JSON-able payload) and ``response`` (text or error body).
        """
        return self.append_many([fields])[0]

    def append_many(self, batch: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Append records in order in ONE transaction (one fsync): group commit."""
        recs = [_prepare(fields) for fields in batch]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                heads: dict[str, tuple[int, str]] = {}
                for rec in recs:
                    aid = str(rec["audit_id"])
                    if aid not in heads:
                        heads[aid] = self._head(aid)
                    seq, prev = heads[aid]
                    rec["seq"], rec["prev_hash"], rec["ts"] = seq + 1, prev, utc_now()
                    rec["hash"] = record_hash(rec)
                    heads[aid] = (seq + 1, rec["hash"])
                    self._db.execute(_INSERT, _to_row(rec))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return recs

    def _head(self, audit_id: str) -> tuple[int, str]:
        last = self._db.execute(
            "SELECT seq, hash FROM records WHERE audit_id = ? ORDER BY seq DESC LIMIT 1",
            (audit_id,)).fetchone()
        return (0, GENESIS) if last is None else (int(last[0]), str(last[1]))

    def iter_records(self, audit_id: str) -> Iterator[dict[str, Any]]:
        cur = self._q("SELECT * FROM records WHERE audit_id = ? ORDER BY rowid",
                               (audit_id,))
        for row in cur:
            yield _from_row(row)

    def records(self, audit_id: str, *, final_only: bool = False) -> list[dict[str, Any]]:
        recs = list(self.iter_records(audit_id))
        return [r for r in recs if r["final"]] if final_only else recs

    def completed_queries(self, audit_id: str) -> set[str]:
        rows = self._q("SELECT DISTINCT query_id FROM records "
                                "WHERE audit_id = ? AND final = 1", (audit_id,))
        return {r[0] for r in rows}

    def attempts_so_far(self, audit_id: str) -> dict[str, int]:
        rows = self._q("SELECT query_id, MAX(attempt) FROM records "
                                "WHERE audit_id = ? GROUP BY query_id", (audit_id,))
        return {r[0]: int(r[1]) for r in rows}

    # --- integrity ------------------------------------------------------------------------
    def verify(self, audit_id: str) -> ChainCheck:
        """Check the whole chain in insertion order; names the first bad record."""
        return verify_records(self.iter_records(audit_id))

    def repair_tail(self, audit_id: str) -> Quarantined | None:
        """Quarantine a torn/invalid *last* record; refuse when damage is further back."""
        check = self.verify(audit_id)
        if check.ok:
            return None
        rows = self._q("SELECT rowid, * FROM records WHERE audit_id = ? ORDER BY rowid",
                       (audit_id,))
        if check.first_bad_seq != len(rows):
            raise AuditFailed(f"evidence chain of audit {audit_id} is damaged: {check.reason}; "
                              "refusing to continue")
        bad = rows[-1]
        with self._lock:
            self._move_to_quarantine(bad, check.reason)
        return Quarantined(audit_id, int(bad["seq"]), check.reason)

    def _move_to_quarantine(self, bad: sqlite3.Row, reason: str) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            values = [bad[name] for name in _ALL_COLUMNS]
            marks = ",".join("?" * (len(_ALL_COLUMNS) + 2))
            self._db.execute(f"INSERT INTO quarantine ({','.join(_ALL_COLUMNS)}, reason, "
                             f"quarantined_at) VALUES ({marks})",
                             (*values, reason, utc_now()))
            self._db.execute("DELETE FROM records WHERE rowid = ?", (bad["rowid"],))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def quarantined(self, audit_id: str) -> list[Quarantined]:
        rows = self._q("SELECT seq, reason FROM quarantine WHERE audit_id = ? "
                       "ORDER BY quarantined_at", (audit_id,))
        return [Quarantined(audit_id, int(r[0]), str(r[1])) for r in rows]

    # --- export ---------------------------------------------------------------------------
    def export_jsonl(self, audit_id: str, path: Path | str, *, reveal: bool = False) -> Path:
        """Write the chain as JSON lines; without ``reveal`` the texts are dropped."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(out, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600 if reveal else 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for rec in self.iter_records(audit_id):
                if not reveal:
                    rec.pop("request", None)
                    rec.pop("response", None)
                fh.write(json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n")
        return out


def _split_sql(script: str) -> list[str]:
    """Split a migration into statements (triggers keep their inner ';')."""
    parts: list[str] = []
    buf = ""
    for line in script.strip().splitlines():
        buf += line + "\n"
        if sqlite3.complete_statement(buf):
            parts.append(buf.strip())
            buf = ""
    if buf.strip():
        parts.append(buf.strip())
    return parts
