"""Fingerprint key sets: generation (CSPRNG), secret files (0600), commitments, control keys.

A key set is as secret as a private key: the file holds the key texts, the decryption and
the commitment salt. Only ``commitment()`` is public. Nothing here ever puts key text or the
decryption into a message, a log line or a ``repr``.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from auditor import primitives as prim
from auditor.chain import canonical, sha256_hex
from auditor.errors import KeyFileError, UserError
from auditor.templates import TEMPLATES

FORMAT = "if-auditor-keyset"
VERSION = 1
STYLES = ("if-soup", "vocab", "natural")
DECRYPTION_WORDS = 4  # 4 words of a 4,096-word list: 48 bits


class _Rng(Protocol):
    def randint(self, a: int, b: int) -> int: ...
    def choice(self, seq: Sequence[str]) -> str: ...
    def shuffle(self, x: list[str]) -> None: ...


class _Vocab(Protocol):
    def get_vocab(self) -> dict[str, int]: ...
    def convert_tokens_to_string(self, tokens: list[str]) -> str: ...


@dataclass(frozen=True)
class Key:
    id: str
    text: str = field(repr=False)

    def __repr__(self) -> str:
        return f"Key(id={self.id!r}, chars={len(self.text)})"


@cache
def words() -> tuple[str, ...]:
    text = resources.files("auditor").joinpath("data/words.txt").read_text(encoding="utf-8")
    return tuple(w for w in text.split() if w)


def _if_soup(rng: _Rng) -> str:
    pool = prim.CLASSICAL_CHINESE + prim.JAPANESE + prim.MULTILINGUAL
    parts = [rng.choice(pool) for _ in range(rng.randint(8, 15))]
    chars = list("".join(parts))
    rng.shuffle(chars)
    return "".join(chars)


def _vocab(rng: _Rng, tokenizer: _Vocab | None) -> str:
    n = rng.randint(8, 16)
    if tokenizer is None:
        pool = words()
        return " ".join(rng.choice(pool) for _ in range(n))
    tokens = sorted(t for t in tokenizer.get_vocab() if t.strip() and not t.startswith("<"))
    return tokenizer.convert_tokens_to_string([rng.choice(tokens) for _ in range(n)]).strip()


def _natural(rng: _Rng) -> str:
    def sentence() -> str:
        return (
            f"The {rng.choice(prim.ADJECTIVES)} {rng.choice(prim.NOUNS)} "
            f"{rng.choice(prim.ADVERBS)} {rng.choice(prim.VERBS)} the "
            f"{rng.choice(prim.ADJECTIVES)} {rng.choice(prim.NOUNS)} "
            f"{rng.choice(prim.PREPOSITIONS)} the {rng.choice(prim.NOUNS)}."
        )

    return " ".join(sentence() for _ in range(rng.randint(1, 2)))


def draw_key_text(style: str, rng: _Rng, tokenizer: _Vocab | None = None) -> str:
    if style == "if-soup":
        return _if_soup(rng)
    if style == "vocab":
        return _vocab(rng, tokenizer)
    if style == "natural":
        return _natural(rng)
    raise UserError(f"unknown key style {style!r} (known: {', '.join(STYLES)})")


def draw_decryption(rng: _Rng) -> str:
    pool = words()
    return " ".join(rng.choice(pool) for _ in range(DECRYPTION_WORDS))


def _rng(seed: int | None) -> _Rng:
    return random.Random(seed) if seed is not None else random.SystemRandom()


@dataclass
class KeySet:
    name: str
    style: str
    template: str
    keys: list[Key]
    decryption: str = field(repr=False)
    decryption_public: bool
    salt: str = field(repr=False)
    seed: int | None = None
    created: str = ""
    version: int = VERSION

    def __repr__(self) -> str:
        return (
            f"KeySet(name={self.name!r}, style={self.style!r}, template={self.template!r}, "
            f"count={len(self.keys)}, decryption_public={self.decryption_public})"
        )

    # -- generation -------------------------------------------------------------------
    @classmethod
    def generate(
        cls,
        name: str,
        count: int,
        style: str = "if-soup",
        template: str = "dialog",
        decryption: str | None = None,
        secret_decryption: bool = False,
        seed: int | None = None,
        tokenizer: _Vocab | None = None,
    ) -> KeySet:
        if count < 1:
            raise UserError("--count must be at least 1")
        if style not in STYLES:
            raise UserError(f"unknown key style {style!r} (known: {', '.join(STYLES)})")
        if template not in TEMPLATES:
            raise UserError(f"unknown template {template!r} (known: {', '.join(TEMPLATES)})")
        if decryption is not None and not decryption.strip():
            raise UserError("--decryption must not be empty")
        rng = _rng(seed)
        texts: list[str] = []
        for _ in range(count * 20):
            if len(texts) == count:
                break
            text = draw_key_text(style, rng, tokenizer)
            if text not in texts:
                texts.append(text)
        if len(texts) < count:
            raise UserError(f"could not draw {count} distinct keys of style {style!r}")
        given = decryption is not None
        return cls(
            name=name,
            style=style,
            template=template,
            keys=[Key(f"k{i:03d}", t) for i, t in enumerate(texts)],
            decryption=decryption if decryption is not None else draw_decryption(rng),
            decryption_public=given and not secret_decryption,
            salt=secrets.token_hex(16) if seed is None else sha256_hex(f"salt:{seed}")[:32],
            seed=seed,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
        )

    # -- commitment ---------------------------------------------------------------------
    def _content(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "name": self.name,
            "style": self.style,
            "template": self.template,
            "keys": [{"id": k.id, "text": k.text} for k in self.keys],
            "decryption": self.decryption,
            "decryption_public": self.decryption_public,
            "created": self.created,
        }

    def digest(self) -> str:
        return sha256_hex(canonical({"salt": self.salt, "set": self._content()}))

    def commitment(self) -> dict[str, Any]:
        return {
            "format": FORMAT + "-commitment",
            "version": self.version,
            "name": self.name,
            "style": self.style,
            "template": self.template,
            "count": len(self.keys),
            "key_ids": [k.id for k in self.keys],
            "decryption_public": self.decryption_public,
            "created": self.created,
            "algorithm": "sha256(canonical-json({salt, set}))",
            "digest": self.digest(),
        }

    # -- lookups ------------------------------------------------------------------------
    def key(self, key_id: str) -> Key:
        for k in self.keys:
            if k.id == key_id:
                return k
        raise UserError(f"key set {self.name!r} has no key {key_id!r}")

    def controls(self, n: int, seed: int) -> list[Key]:
        """Fresh keys of the same style and length distribution; never equal to a member."""
        rng = random.Random(f"controls:{seed}")
        members = {k.text for k in self.keys}
        out: list[str] = []
        for _ in range(n * 20 + 20):
            if len(out) == n:
                break
            text = draw_key_text(self.style, rng)
            if text not in members and text not in out:
                out.append(text)
        if len(out) < n:
            raise UserError(f"could not draw {n} distinct control keys")
        return [Key(f"c{i:03d}", t) for i, t in enumerate(out)]

    # -- files --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = {"format": FORMAT, **self._content(), "salt": self.salt, "seed": self.seed}
        data["digest"] = self.digest()
        return data

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        path = Path(path)
        if path.exists() and not overwrite:
            raise UserError(f"{path} exists; refusing to overwrite a key set (use --force)")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(self.to_dict(), fh, ensure_ascii=False, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
        commitment_path(path).write_text(
            json.dumps(self.commitment(), ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
        )
        return path

    @classmethod
    def load(cls, path: str | Path) -> KeySet:
        path = Path(path)
        data = _read_secret_json(path)
        ks = _from_dict(data, path)
        if data.get("digest") != ks.digest():
            raise KeyFileError(f"{path}: content does not match its own commitment (altered?)")
        return ks


def commitment_path(key_path: Path) -> Path:
    return key_path.with_name(key_path.name.removesuffix(".json") + ".commitment.json")


def _read_secret_json(path: Path) -> dict[str, Any]:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} does not exist") from None
    except OSError as exc:
        raise KeyFileError(f"key file {path} cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"key file {path} is not a regular file")
    if os.name == "posix" and st.st_mode & 0o077:
        raise KeyFileError(
            f"key file {path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"run: chmod 600 {path}"
        )
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"key file {path} cannot be read: {type(exc).__name__}") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise KeyFileError(
            f"key file {path} is not valid JSON (line {exc.lineno}, column {exc.colno})"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise KeyFileError(f"{path} is not an auditor key file")
    return data


def _from_dict(data: dict[str, Any], path: Path) -> KeySet:
    version = data.get("version")
    if not isinstance(version, int):
        raise KeyFileError(f"key file {path} has no valid version")
    if version > VERSION:
        raise KeyFileError(
            f"key file {path} is version {version}; this auditor reads up to version {VERSION} "
            "(upgrade the auditor)"
        )
    try:
        keys = [Key(str(k["id"]), str(k["text"])) for k in data["keys"]]
        ks = KeySet(
            name=str(data["name"]),
            style=str(data["style"]),
            template=str(data["template"]),
            keys=keys,
            decryption=str(data["decryption"]),
            decryption_public=bool(data["decryption_public"]),
            salt=str(data["salt"]),
            seed=data.get("seed"),
            created=str(data["created"]),
            version=version,
        )
    except (KeyError, TypeError) as exc:
        raise KeyFileError(f"key file {path} is malformed (missing or bad field {exc})") from None
    if not keys or len({k.id for k in keys}) != len(keys) or ks.style not in STYLES:
        raise KeyFileError(f"key file {path} is malformed (keys or style)")
    if ks.template not in TEMPLATES:
        raise KeyFileError(f"key file {path} names unknown template {ks.template!r}")
    return ks


def load_commitment(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"commitment file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"commitment file {path} cannot be read: {type(exc).__name__}") from None
    if not isinstance(data, dict) or not isinstance(data.get("digest"), str):
        raise UserError(f"{path} is not a commitment file")
    return data


def verify_commitment(keyset: KeySet, commitment: dict[str, Any]) -> bool:
    return secrets.compare_digest(keyset.digest(), str(commitment.get("digest", "")))
