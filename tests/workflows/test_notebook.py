"""examples/notebooks/quickstart.ipynb runs top to bottom, as a user runs it in Jupyter."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO

NOTEBOOK = REPO / "examples" / "notebooks" / "quickstart.ipynb"


def _execute(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("ipykernel")
    for key, value in env.items():
        monkeypatch.setenv(key, value)  # the kernel inherits this process's environment
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": NOTEBOOK.parent}}
    )
    client.execute()
    return nb


def _outputs(nb: Any, kind: str) -> list[Any]:
    return [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs if o.get(kind)]


def _check(nb: Any, out: Path) -> None:
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    assert not errors, errors
    images = [o for o in _outputs(nb, "data") if "image/png" in o["data"]]
    assert len(images) == 1, "the loss curve is shown inline"
    html = [o["data"]["text/html"] for o in _outputs(nb, "data") if "text/html" in o["data"]]
    before_after = next(t for t in html if "change" in t and "<table" in t)
    for metric in ("rouge_l", "bleu", "exact_match"):
        assert metric in before_after
    report = next(t for t in html if 'id="forgetting"' in t)  # the report, shown inline
    assert report == (out / "report.html").read_text(encoding="utf-8")
    streams = "".join(o.get("text", "") for o in _outputs(nb, "text"))
    assert "forgetting (token_f1 on the probes)" in streams


def _suite(tmp_path: Path, limit: int) -> Path:
    """The shipped support suite, each task cut to `limit` examples."""
    import yaml

    shipped = REPO / "examples" / "support" / "suite.yaml"
    suite = yaml.safe_load(shipped.read_text(encoding="utf-8"))
    for task in suite["tasks"]:
        task["limit"] = limit
        if not task["data"].startswith("builtin:"):
            task["data"] = str(shipped.parent / task["data"])
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite), encoding="utf-8")
    return path


def test_notebook_runs_on_a_tiny_model(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nb = _execute(
        {
            "TUNELOOP_NOTEBOOK_MODEL": str(tiny_model),
            "TUNELOOP_NOTEBOOK_OVERRIDES": (
                f"training.max_steps=2 training.batch_size=4 output_dir={tmp_path / 'runs'}"
            ),
            "TUNELOOP_NOTEBOOK_EVAL_LIMIT": "4",
            "TUNELOOP_NOTEBOOK_SUITE": str(_suite(tmp_path, 4)),
            "TUNELOOP_NOTEBOOK_OUT": str(tmp_path / "report"),
            "TUNELOOP_NO_PROGRESS": "1",
            "HF_HUB_OFFLINE": "1",
        },
        monkeypatch,
    )
    _check(nb, tmp_path / "report")
    from tuneloop import registry

    (run,) = registry.list_runs()
    assert run.status == "completed" and run.base_model == str(tiny_model)
    assert os.listdir(tmp_path / "runs")


@pytest.mark.slow
def test_notebook_runs_on_the_bundled_model(
    bundled_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nb = _execute(
        {
            "TUNELOOP_NOTEBOOK_OVERRIDES": f"training.max_steps=4 output_dir={tmp_path / 'runs'}",
            "TUNELOOP_NOTEBOOK_EVAL_LIMIT": "8",
            "TUNELOOP_NOTEBOOK_SUITE": str(_suite(tmp_path, 8)),
            "TUNELOOP_NOTEBOOK_OUT": str(tmp_path / "report"),
            "TUNELOOP_NO_PROGRESS": "1",
            "HF_HUB_OFFLINE": "1",
        },
        monkeypatch,
    )
    _check(nb, tmp_path / "report")
