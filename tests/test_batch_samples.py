"""Per-endpoint samples in the endpoints file."""

from __future__ import annotations

from pathlib import Path

import pytest

from auditor.batch import load_batch
from auditor.errors import UserError
from auditor.plan import CampaignSettings


def _write(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "endpoints.toml"
    path.write_text(
        '[defaults]\nkeys = "keys/k.json"\n\n[[endpoint]]\nname = "a"\n'
        f'spec = "compat:http://127.0.0.1:9/v1#m"\ntemperature = 0.7\n{extra}\n',
        encoding="utf-8")
    return path


def test_samples_override_the_campaign(tmp_path: Path) -> None:
    (entry,) = load_batch(_write(tmp_path, "samples = 3"))
    settings = entry.settings(CampaignSettings())
    assert settings.samples == 3 and settings.temperatures == (0.7,)
    (plain,) = load_batch(_write(tmp_path, ""))
    assert plain.settings(CampaignSettings(samples=2)).samples == 2


@pytest.mark.parametrize("bad", ["samples = 0", "samples = 1.5"])
def test_bad_samples_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(UserError, match="samples"):
        load_batch(_write(tmp_path, bad))
