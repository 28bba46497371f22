"""The layer table in ARCHITECTURE.md, enforced: import-linter contracts must hold."""

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"
    assert lint_imports.exists(), "import-linter is a dev dependency"
    result = subprocess.run([str(lint_imports)], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_the_engine_contract_names_every_module_of_the_worker_around_it() -> None:
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (engine,) = [c for c in contracts if c["name"] == "The engine imports nothing of the worker around it"]
    around = {f"worker.{path.stem}" for path in (ROOT / "worker").glob("*.py") if path.stem != "__init__"}
    packages = [path for path in (ROOT / "worker").iterdir() if (path / "__init__.py").exists()]
    around |= {f"worker.{path.name}" for path in packages}
    assert set(engine["forbidden_modules"]) == around - {"worker.engine"}
