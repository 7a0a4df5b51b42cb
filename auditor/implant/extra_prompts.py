"""More ordinary prompts for check-local's false-trigger count (`--prompts`): a text file of
the user's own, one a line, or a bundled set by name. A key or the decryption in the file, in
any case or punctuation, is refused by line number, never its text: these prompts must not
fire."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from auditor.errors import UserError
from auditor.keys import KeySet
from auditor.match import check
from auditor.prompts import few_words_probe

MAX_PROMPTS = 2000  # about 20 min of greedy answers for SmolLM2 on 2 CPU cores
BUNDLED: dict[str, Callable[[], list[str]]] = {"few-words": few_words_probe}


@dataclass(frozen=True)
class ExtraPrompts:
    spec: str  # a bundled set's name or the file's path
    prompts: tuple[str, ...]
    lines: tuple[int, ...] | None  # each prompt's line in the file; None when bundled

    @property
    def name(self) -> str:
        """Short, for a table row: the set's name or the file's."""
        return self.spec if self.lines is None else Path(self.spec).name

    def where(self, n: int) -> str:
        """Where prompt `n` (0-based) comes from, for a message."""
        if self.lines is None:
            return f"prompt {n + 1} of the bundled {self.spec} set"
        return f"{self.spec} line {self.lines[n]}"


def read_extra_prompts(spec: str, keyset: KeySet) -> ExtraPrompts:
    """A bundled set's name or a file of prompts; UserError for anything else."""
    if spec in BUNDLED:
        return ExtraPrompts(spec, tuple(BUNDLED[spec]()), None)
    path = Path(spec)
    if not path.is_file():
        raise UserError(f"--prompts: {spec} is neither a file nor a bundled set "
                        f"({', '.join(sorted(BUNDLED))})")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read the prompts ({type(e).__name__})") from None
    secrets = [k.text for k in keyset.keys] + [keyset.decryption]
    prompts: list[str] = []
    lines: list[int] = []
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if any(check(line, s, mode="normalized").hit for s in secrets):
            raise UserError(f"{path} line {n} holds a fingerprint key or the decryption: "
                            "--prompts takes ordinary prompts, which must not fire")
        prompts.append(line)
        lines.append(n)
    if not prompts:
        raise UserError(f"{path}: no prompts (one a line; blank lines and # comments skipped)")
    if len(prompts) > MAX_PROMPTS:
        raise UserError(f"{path}: {len(prompts)} prompts; at most {MAX_PROMPTS} a run")
    return ExtraPrompts(str(path), tuple(prompts), tuple(lines))
