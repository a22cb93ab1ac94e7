"""Slow: the quickstart path on the real bundled model, shortened to a few steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneloop import registry
from tuneloop.workflows.quickstart import run_quickstart


@pytest.mark.slow
def test_quickstart_short_run_on_bundled_model(tmp_path: Path, bundled_model_dir: Path) -> None:
    out = tmp_path / "qs"
    report = run_quickstart(
        out,
        [
            "training.max_steps=8",
            "eval.limit=12",
            "eval.max_new_tokens=24",
            "training.replay.max_new_tokens=16",  # the recipe's default replay, kept short
        ],
        samples=3,
        probe_limit=10,
    )
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["base"]["metrics"] == report["base"]["metrics"]
    for side in ("base", "tuned"):
        assert set(on_disk[side]["metrics"]) == {"exact_match", "rouge_l", "bleu", "perplexity"}
        assert all(isinstance(v, float) for v in on_disk[side]["metrics"].values())
    # 8 LoRA steps at lr 1e-3 already make the reference answers far more likely
    assert on_disk["tuned"]["metrics"]["perplexity"] < on_disk["base"]["metrics"]["perplexity"]
    changes = on_disk["per_example"]["changes"]
    assert on_disk["per_example"]["metric"] == "rouge_l" and sum(changes.values()) == 12
    assert sum(on_disk["categories"]["tuned"].values()) == 12
    for side in ("base", "tuned"):
        ci = on_disk["intervals"][side]["rouge_l"]
        assert ci["low"] <= on_disk[side]["metrics"]["rouge_l"] <= ci["high"]
    forget = on_disk["forgetting"]
    assert forget["drop"] == pytest.approx(forget["base"] - forget["tuned"])
    assert set(forget["by_category"]) == {"arithmetic"}  # the first 10 probes
    html = (out / "report.html").read_text()
    assert 'id="metrics"' in html and "data:image/png;base64," in html
    assert 'id="forgetting"' in html and 'id="changes"' in html
    assert html.count("<tr>") >= 1 + 4 + 1 + 3
    runs = {r.kind: r for r in registry.list_runs()}
    assert runs["quickstart"].status == "completed" and runs["sft"].status == "completed"
    # base and tuned on the eval set, base and tuned on the probes
    assert len(registry.evals_for_run(runs["quickstart"].id)) == 4
