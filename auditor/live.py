"""Rich live view: one progress bar per endpoint, an overall bar, verdicts as they firm up.

Without a terminal it prints one line per finished endpoint; ``enabled=False`` is silent.
Shows endpoint ids, counts and verdicts only: never prompt text.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

if TYPE_CHECKING:
    from auditor.audit import Progress as EndpointProgress

STYLE = {"OWNED": "bold green", "NOT DETECTED": "yellow", "SUSPECTED FILTERING": "magenta",
         "ERROR": "bold red"}
MAX_BARS = 40  # beyond this many endpoints only the overall bar and a summary line move


def verdict_markup(verdict: str | None, status: str) -> str:
    if status == "error":
        return f"[{STYLE['ERROR']}]ERROR[/]"
    if verdict is None:
        return "[dim]…[/]"
    text = verdict if status != "running" else f"{verdict}?"
    return f"[{STYLE.get(verdict, 'white')}]{text}[/]"


class LiveView:
    """A Listener for the audit engine (``update(progress)``)."""

    def __init__(self, console: Console | None = None, *, enabled: bool = True) -> None:
        self.console = console or Console(stderr=True)
        self.enabled = enabled and self.console.is_terminal
        self.plain = enabled and not self.enabled
        self._bars = Progress(TextColumn("{task.description}", justify="left"), BarColumn(),
                              MofNCompleteColumn(), TextColumn("{task.fields[verdict]}"),
                              console=self.console, refresh_per_second=4, transient=False)
        self._tasks: dict[str, TaskID] = {}
        self._state: dict[str, EndpointProgress] = {}
        self._overall: TaskID | None = None
        self._reported: set[str] = set()

    def __enter__(self) -> LiveView:
        if self.enabled:
            self._overall = self._bars.add_task("[bold]all endpoints", total=0, verdict="")
            self._bars.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.enabled:
            self._bars.stop()

    def update(self, progress: EndpointProgress) -> None:
        self._state[progress.endpoint_id] = progress
        if not self.enabled:
            if self.plain:
                self._plain(progress)
            return
        if progress.endpoint_id not in self._tasks and len(self._tasks) < MAX_BARS:
            self._tasks[progress.endpoint_id] = self._bars.add_task(
                progress.endpoint_id, total=progress.total, verdict="")
        task = self._tasks.get(progress.endpoint_id)
        mark = verdict_markup(progress.verdict, progress.status)
        if task is not None:
            self._bars.update(task, completed=progress.done, total=progress.total, verdict=mark)
        self._refresh_overall()

    def _refresh_overall(self) -> None:
        if self._overall is None:
            return
        states = list(self._state.values())
        done = sum(min(s.done, s.total) for s in states)
        total = sum(s.total for s in states)
        finished = sum(s.status != "running" for s in states)
        owned = sum(s.verdict == "OWNED" for s in states)
        errors = sum(s.status == "error" for s in states)
        summary = f"{finished}/{len(states)} endpoints done, {owned} owned, {errors} errors"
        self._bars.update(self._overall, completed=done, total=total, verdict=summary)

    def _plain(self, p: EndpointProgress) -> None:
        if p.status == "running" or p.endpoint_id in self._reported:
            return
        self._reported.add(p.endpoint_id)
        verdict = "ERROR" if p.status == "error" else (p.verdict or "?")
        self.console.print(f"{p.endpoint_id}: {p.done}/{p.total} queries, {verdict}",
                           markup=False, highlight=False)
