"""`.env.example` documents every setting: each `Settings` field as `SPPO_<NAME>`, and nothing else."""

import re
from pathlib import Path

from core.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_env_example_names_every_setting_and_no_other() -> None:
    text = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^#? ?(SPPO_[A-Z0-9_]+)=", text, flags=re.MULTILINE))
    fields = {f"SPPO_{name.upper()}" for name in Settings.model_fields}
    assert not fields - documented, f"add to .env.example: {sorted(fields - documented)}"
    assert not documented - fields, f"not settings any more: {sorted(documented - fields)}"
