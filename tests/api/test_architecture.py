"""The layer rule of docs/architecture.md holds, and the CLI is only the public API."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

SRC = REPO / "src" / "tuneloop"


def test_import_contracts_hold() -> None:
    """`lint-imports` checks the contracts in pyproject.toml: layers point down, serving
    needs no method package, the studio imports only the API and the feedback functions, and
    the CLI imports no layer directly."""
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports is missing: pip install -e '.[test]'")
    proc = subprocess.run([exe], cwd=REPO, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "Contracts: 4 kept, 0 broken." in proc.stdout


def _tuneloop_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tuneloop"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("tuneloop")}
    return found


def test_cli_modules_import_only_the_api_errors_and_each_other() -> None:
    # tuneloop.studio: `tuneloop studio` starts the web app, which sits above the API
    allowed = {"tuneloop", "tuneloop.api", "tuneloop.errors", "tuneloop.cli", "tuneloop.studio"}
    for path in sorted((SRC / "cli").glob("*.py")):
        extra = {
            m
            for m in _tuneloop_imports(path)
            if m not in allowed and not m.startswith("tuneloop.cli.")
        }
        assert not extra, f"{path.name} imports {sorted(extra)}; call tuneloop.api instead"


def test_the_public_names_are_the_api_and_documented() -> None:
    import tuneloop
    from tuneloop import api

    for name in tuneloop.API:
        assert getattr(tuneloop, name) is getattr(api, name)
    public = {
        n
        for n, obj in vars(api).items()
        if not n.startswith("_") and getattr(obj, "__module__", None) == "tuneloop.api"
    }
    # the two writers serve the CLI's --json/--card options; users have their own
    assert public - {"write_json", "write_text"} == set(tuneloop.API) - {"BUNDLED_MODEL"}


def test_python_reference_in_docs_matches_the_code() -> None:
    script = REPO / "scripts" / "python_reference.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr


def test_api_verbs_survive_importing_the_layers() -> None:
    """`tuneloop.train(...)` keeps working after any code imports the training package
    (a submodule named `train` would replace the function on first import)."""
    code = (
        "import importlib, pkgutil, tuneloop, tuneloop.api as api;"
        "[importlib.import_module(f'tuneloop.{m.name}') for m in pkgutil.iter_modules("
        "tuneloop.__path__)];"
        "print([n for n in tuneloop.API if callable(getattr(api, n)) and "
        "getattr(tuneloop, n) is not getattr(api, n)])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"  # no package shadows an API function
