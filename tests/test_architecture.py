"""The layer table in ARCHITECTURE.md, enforced: import-linter contracts must hold."""

import copy
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import grimp
from importlinter.configuration import configure
from importlinter.contracts.forbidden import ForbiddenContract

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"
    assert lint_imports.exists(), "import-linter is a dev dependency"
    result = subprocess.run([str(lint_imports)], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def _graph() -> grimp.ImportGraph:
    linter = _pyproject()["tool"]["importlinter"]
    return grimp.build_graph(*linter["root_packages"], include_external_packages=True, cache_dir=None)


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _kept(contract_name: str, graph: grimp.ImportGraph) -> bool:
    configure()
    linter = _pyproject()["tool"]["importlinter"]
    (options,) = [c for c in linter["contracts"] if c["name"] == contract_name]
    session = {key: linter[key] for key in ("root_packages", "include_external_packages")}
    contract = ForbiddenContract(name=contract_name, session_options=session, contract_options=options)
    return contract.check(graph, verbose=False).kept


def _with_import(graph: grimp.ImportGraph, importer: str, imported: str) -> grimp.ImportGraph:
    changed = copy.deepcopy(graph)
    changed.add_import(importer=importer, imported=imported)
    return changed


def test_the_engine_contract_breaks_on_an_import_of_anything_of_ours_but_the_spec() -> None:
    graph = _graph()
    name = "The engine imports nothing of ours but the spec, and no service infrastructure"
    assert _kept(name, graph)
    around = {f"worker.{path.stem}" for path in (ROOT / "worker").glob("*.py") if path.stem != "__init__"}
    around |= {f"worker.{p.name}" for p in (ROOT / "worker").iterdir() if (p / "__init__.py").exists()}
    for module in [*sorted(around - {"worker.engine"}), "core.settings", "app.errors", "cli.main"]:
        assert not _kept(name, _with_import(graph, "worker.engine.config", module)), module
    for module in ("jobspec.algorithms", "grading.result", "worker.engine.data"):
        assert _kept(name, _with_import(graph, "worker.engine.config", module)), module


def test_the_worker_contract_admits_the_core_and_breaks_on_the_http_layer() -> None:
    graph = _graph()
    name = "The worker imports the core only, never the HTTP layer"
    assert _kept(name, _with_import(graph, "worker.training", "core.lifecycle"))
    for module in ("app.errors", "app.services.keys", "app.schemas.progress", "fastapi"):
        assert not _kept(name, _with_import(graph, "worker.training", module)), module
