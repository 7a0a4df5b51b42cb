"""Signed evidence bundles (reports/<audit-id>/) and their offline verification.

A bundle holds the renderings, the evidence export, the public commitment, the settings
needed to re-derive the statistics, a manifest of SHA-256 file hashes and an Ed25519
signature over the manifest. Key text and the decryption stay out unless ``reveal``
(dispute stage): then keyset.json and the request/response texts are included too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from auditor import signing
from auditor.chain import HASHED_FIELDS, canonical, sha256_hex
from auditor.errors import UserError
from auditor.report import Report, to_html, to_json, to_markdown

if TYPE_CHECKING:
    from auditor.keys import KeySet

BUNDLE_SCHEMA = 1
MANIFEST, SIGNATURE, PUBLIC_KEY = "manifest.json", "manifest.sig", "signing.pub"
_HEX_LINE = re.compile(r"[0-9a-f]+\n")
DEFAULT_MATCH = {"mode": "fuzzy", "max_rel_distance": 0.15}


@dataclass
class VerifyResult:
    ok: bool
    reason: str = ""
    checks: list[tuple[str, bool, str]] = field(default_factory=list)  # (name, ok, detail)
    public_key: str = ""  # fingerprint of the signer

    def add(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append((name, ok, detail))
        if not ok and self.ok:
            self.ok, self.reason = False, f"{name}: {detail}"
        return ok


def export_record(rec: Mapping[str, Any], reveal: bool) -> dict[str, Any]:
    """The hashed header, the hash and (revealed only) the texts of one record."""
    out = {name: rec.get(name) for name in HASHED_FIELDS}
    out["hash"] = rec.get("hash")
    if reveal:
        for text in ("request", "response"):
            if text in rec:
                out[text] = rec[text]
    return out


def evidence_jsonl(records: Sequence[Mapping[str, Any]], reveal: bool) -> bytes:
    return b"".join(canonical(export_record(r, reveal)) + b"\n" for r in records)


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=1, sort_keys=True, ensure_ascii=False, allow_nan=False)
            + "\n").encode("utf-8")


def bundle_files(report: Report, records: Sequence[Mapping[str, Any]],
                 commitment: Mapping[str, Any], *, keyset: KeySet | None, reveal: bool,
                 match_settings: Mapping[str, Any]) -> dict[str, bytes]:
    """Name -> content of every signed file of a bundle."""
    if reveal and keyset is None:
        raise UserError("--reveal needs the key set")
    files = {
        "report.json": to_json(report).encode("utf-8"),
        "report.md": to_markdown(report).encode("utf-8"),
        "report.html": to_html(report).encode("utf-8"),
        "evidence.jsonl": evidence_jsonl(records, reveal),
        "commitment.json": _json_bytes(dict(commitment)),
        "settings.json": _json_bytes({"schema": BUNDLE_SCHEMA,
                                      "analysis": report.analysis.settings,
                                      "match": dict(match_settings), "revealed": reveal}),
    }
    if reveal and keyset is not None:
        files["keyset.json"] = _json_bytes(keyset.to_dict())
    return files


def write_bundle(out_dir: Path, report: Report, records: Sequence[Mapping[str, Any]],
                 commitment: dict[str, Any], *, keyset: KeySet | None = None,
                 reveal: bool = False, signing_key: Path | None = None,
                 match_settings: Mapping[str, Any] | None = None) -> Path:
    """Write and sign reports/<audit-id>/; refuses to overwrite a non-empty directory."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UserError(f"bundle directory {out_dir} is not empty; refusing to overwrite")
    if canonical(dict(commitment)) != canonical(report.commitment):
        raise UserError("the commitment given differs from the report's commitment")
    key = signing.load_or_create(signing_key)
    files = bundle_files(report, records, commitment, keyset=keyset, reveal=reveal,
                         match_settings=match_settings or DEFAULT_MATCH)
    pub = signing.public_hex(key)
    files[PUBLIC_KEY] = (pub + "\n").encode("ascii")
    manifest = {"schema": BUNDLE_SCHEMA, "audit_id": report.audit_id,
                "endpoint_id": report.endpoint_id, "public_key": pub,
                "files": {name: sha256_hex(data) for name, data in sorted(files.items())}}
    manifest_bytes = _json_bytes(manifest)
    files[MANIFEST] = manifest_bytes
    files[SIGNATURE] = (signing.sign(key, manifest_bytes) + "\n").encode("ascii")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        mode = 0o600 if name == "keyset.json" else 0o644
        path = out_dir / name
        path.write_bytes(data)
        path.chmod(mode)
    return out_dir


def verify_bundle(path: Path, *, expected_key: str | None = None) -> VerifyResult:
    """Hashes, signature, chain, commitment, matcher (revealed) and every statistic."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path} is not a bundle directory")
    result = VerifyResult(ok=True)
    for step in (_check_signature, _check_files, _check_chain, _check_commitment,
                 _check_matcher, _check_statistics):
        try:
            if not step(path, result, expected_key):
                break
        except (ValueError, KeyError, TypeError, UserError, UnicodeDecodeError) as exc:
            name = step.__name__.removeprefix("_check_")
            result.add(name, False, f"unreadable bundle content ({type(exc).__name__})")
            break
    return result


# -- verification steps (each returns False to stop at the first failure) ----------------


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path.name} is not valid JSON ({type(exc).__name__})") from None


def _check_signature(path: Path, res: VerifyResult, expected_key: str | None) -> bool:
    try:
        manifest_bytes = (path / MANIFEST).read_bytes()
        sig = (path / SIGNATURE).read_bytes().decode("ascii")
        pub = (path / PUBLIC_KEY).read_bytes().decode("ascii").removesuffix("\n")
    except FileNotFoundError as exc:
        return res.add("signature", False, f"missing {Path(str(exc.filename)).name}")
    except UnicodeDecodeError:
        return res.add("signature", False, "signature or public key is not ASCII hex")
    if not (_HEX_LINE.fullmatch(sig) and _HEX_LINE.fullmatch(pub + "\n")):
        return res.add("signature", False, "signature or public key is not one hex line")
    if not signing.verify(pub, sig, manifest_bytes):
        return res.add("signature", False, "manifest signature does not verify")
    res.public_key = signing.fingerprint(pub)
    if expected_key is not None and expected_key not in (pub, res.public_key):
        return res.add("signature", False, f"signed by {res.public_key}, not the expected key")
    return res.add("signature", True, f"Ed25519 by {res.public_key}")


def _check_files(path: Path, res: VerifyResult, _key: str | None) -> bool:
    try:
        manifest = _read_json(path / MANIFEST)
        listed = dict(manifest["files"])
        pub = (path / PUBLIC_KEY).read_text(encoding="ascii").strip()
    except (ValueError, KeyError, TypeError) as exc:
        return res.add("manifest", False, str(exc) or "malformed manifest")
    if manifest.get("public_key") != pub:
        return res.add("manifest", False, "public key differs from the manifest's")
    present = {p.name for p in path.iterdir()} - {MANIFEST, SIGNATURE}
    extra, missing = sorted(present - set(listed)), sorted(set(listed) - present)
    if extra or missing:
        return res.add("files", False, f"unlisted {extra} / missing {missing}")
    for name in sorted(listed):
        if sha256_hex((path / name).read_bytes()) != listed[name]:
            return res.add("files", False, f"{name} does not match its manifest hash")
    return res.add("files", True, f"{len(listed)} files match the manifest")


def _load(path: Path) -> tuple[Report, list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    report = Report.from_dict(_read_json(path / "report.json"))
    lines = (path / "evidence.jsonl").read_bytes().decode("utf-8").splitlines()
    records = [json.loads(line) for line in lines if line]
    return report, records, _read_json(path / "settings.json"), _read_json(
        path / "commitment.json")


def _check_chain(path: Path, res: VerifyResult, _key: str | None) -> bool:
    from auditor.chain import verify_records

    try:
        report, records, _, _ = _load(path)
    except (ValueError, UserError, UnicodeDecodeError) as exc:
        return res.add("chain", False, f"bundle content unreadable ({exc})")
    check = verify_records(records)
    if not check.ok:
        return res.add("chain", False, check.reason)
    if (check.head, check.count) != (report.chain_head, report.chain_count):
        return res.add("chain", False, "chain head or count differs from the report")
    return res.add("chain", True, f"{check.count} records, head {check.head[:16]}")


def _check_commitment(path: Path, res: VerifyResult, _key: str | None) -> bool:
    report, _, _, commitment = _load(path)
    if canonical(commitment) != canonical(report.commitment):
        return res.add("commitment", False, "commitment.json differs from the report's")
    if not (path / "keyset.json").exists():
        return res.add("commitment", True, "public commitment only (key set not revealed)")
    from auditor.keys import verify_commitment

    keyset = _keyset(path)
    if not verify_commitment(keyset, commitment):
        return res.add("commitment", False, "revealed key set does not match the commitment")
    if report.commitment_ok is False:
        return res.add("commitment", False, "report says mismatch but the key set matches")
    return res.add("commitment", True, "revealed key set matches the commitment")


def _keyset(path: Path) -> KeySet:
    from auditor.keys import Key, KeySet

    d = _read_json(path / "keyset.json")
    try:
        return KeySet(name=str(d["name"]), style=str(d["style"]), template=str(d["template"]),
                      keys=[Key(str(k["id"]), str(k["text"])) for k in d["keys"]],
                      decryption=str(d["decryption"]),
                      decryption_public=bool(d["decryption_public"]), salt=str(d["salt"]),
                      seed=d.get("seed"), created=str(d["created"]), version=int(d["version"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"keyset.json is malformed ({type(exc).__name__})") from None


def _check_matcher(path: Path, res: VerifyResult, _key: str | None) -> bool:
    if not (path / "keyset.json").exists():
        return res.add("matcher", True, "not re-run (texts not revealed)")
    from auditor.match import check, looks_like_refusal

    _, records, settings, _ = _load(path)
    decryption = _keyset(path).decryption
    match = settings.get("match", DEFAULT_MATCH)
    for rec in records:
        if rec.get("outcome") != "ok" or not isinstance(rec.get("response"), str):
            continue
        m = check(rec["response"], decryption, mode=str(match["mode"]),
                  max_rel_distance=float(match["max_rel_distance"]))
        if (m.hit, m.kind) != (rec.get("hit"), rec.get("match_kind")):
            return res.add("matcher", False, f"record {rec.get('seq')}: hit differs on re-run")
        if looks_like_refusal(rec["response"]) != rec.get("refused"):
            return res.add("matcher", False, f"record {rec.get('seq')}: refusal differs")
    return res.add("matcher", True, "hits and refusals re-derived from the revealed texts")


def _check_statistics(path: Path, res: VerifyResult, _key: str | None) -> bool:
    from auditor import stats
    from auditor.report import final_verdict
    from auditor.scoring import AnalysisSettings, analyze

    report, records, settings, _ = _load(path)
    s = AnalysisSettings.from_dict(settings.get("analysis", {}))
    mine = [r for r in records if r.get("endpoint_id") == report.endpoint_id]
    derived = analyze(mine, s)
    if canonical(derived.to_dict()) != canonical(report.analysis.to_dict()):
        return res.add("statistics", False, _first_difference(derived.to_dict(),
                                                              report.analysis.to_dict()))
    ps, i = report.batch_p_values, report.batch_index
    if not 0 <= i < len(ps) or ps[i] != derived.p_value or len(ps) != report.batch_size:
        return res.add("statistics", False, "batch p-values do not contain this endpoint's")
    if stats.adjust(ps, report.correction)[i] != report.p_corrected:
        return res.add("statistics", False, "corrected p-value does not re-derive")
    expected = final_verdict(derived, float(report.p_corrected or 1.0), report.alpha)
    # The engine may mark a failed endpoint ERROR: a weaker claim than the evidence allows.
    engine_error = report.verdict == "ERROR" and expected != "OWNED"
    if report.verdict != expected and not engine_error:
        return res.add("statistics", False, "verdict does not follow from the statistics")
    if (path / "report.md").read_text(encoding="utf-8") != to_markdown(report):
        return res.add("statistics", False, "report.md does not render from report.json")
    return res.add("statistics", True, f"{report.verdict}: every figure re-derived")


def _first_difference(mine: Mapping[str, Any], theirs: Mapping[str, Any]) -> str:
    for name in sorted(set(mine) | set(theirs)):
        if canonical(mine.get(name)) != canonical(theirs.get(name)):
            return f"analysis field {name!r} does not re-derive from the evidence"
    return "analysis does not re-derive from the evidence"
