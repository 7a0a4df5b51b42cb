"""Group commit for the evidence store, off the event loop.

Records from every query (and every endpoint of a batch) that arrive while a commit is
in progress go into the next transaction together: one fsync for many records. Each
caller still waits until its own record is committed, so a record is durable before the
next attempt of its query starts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from auditor.evidence import EvidenceStore

MAX_BATCH = 512


class GroupWriter:
    """``await writer.append(fields)`` returns the committed record."""

    def __init__(self, store: EvidenceStore) -> None:
        self.store = store
        self._queue: list[tuple[Mapping[str, Any], asyncio.Future[dict[str, Any]]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.commits = 0  # transactions so far (for benchmarks)

    async def append(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._queue.append((fields, fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await asyncio.shield(fut)

    async def _flush(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            try:
                recs = await asyncio.to_thread(self.store.append_many, [f for f, _ in batch])
            except Exception as exc:  # every waiter learns of the failure
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            self.commits += 1
            for (_, fut), rec in zip(batch, recs, strict=True):
                if not fut.done():
                    fut.set_result(rec)

    async def drain(self) -> None:
        """Wait until everything queued is committed."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)
