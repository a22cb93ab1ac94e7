"""Curate a raw file into a versioned dataset with a data card.

read (malformed rows counted, good rows kept) -> steps from the config, in order ->
Parquet per split (output folder and the registry's immutable store) -> card.json/html.
`inspect` runs report-only checks on the raw rows and writes nothing to the registry.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tuneloop.data.card import build_card, render_card_html
from tuneloop.data.config import CurateConfig, check_steps
from tuneloop.data.formats import RowOptions
from tuneloop.data.readers import ReadResult, read_rows
from tuneloop.data.records import Row
from tuneloop.data.steps import StepLog


@dataclass
class CurateResult:
    rows: list[Row]
    logs: list[StepLog]
    card: dict[str, Any]
    out_dir: Path
    dataset_ids: dict[str, int] = field(default_factory=dict)
    raw_dataset_id: int | None = None


def _options(config: CurateConfig) -> RowOptions:
    i = config.input
    return RowOptions(
        system_prompt=i.system_prompt,
        classification_template=i.classification_template,
        text_field=i.text_field,
        label_field=i.label_field,
    )


def _input_info(result: ReadResult) -> dict[str, Any]:
    return {
        "path": result.path,
        "format": result.format,
        "kind": result.kind,
        "rows_read": len(result.rows),
        "malformed": len(result.errors),
        "malformed_examples": [
            {"where": e.where, "problem": e.problem} for e in result.errors[:10]
        ],
    }


def _label_set(config: CurateConfig, config_dir: Path) -> list[str] | None:
    if not config.input.labels_file:
        return None
    from tuneloop.data.score import load_labels

    path = Path(config.input.labels_file)
    return load_labels(path if path.is_absolute() else config_dir / path)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def curate(
    path: str | Path,
    config: CurateConfig,
    out_dir: str | Path,
    name: str | None = None,
    config_dir: Path | None = None,
) -> CurateResult:
    """Run the pipeline and store every split as a dataset version whose parent is the input."""
    from tuneloop import registry
    from tuneloop.data.pipeline import run_steps
    from tuneloop.data.store import store_version, write_parquet

    check_steps(config)
    path = Path(path)
    name = name or path.stem
    config_dir = config_dir or Path.cwd()
    labels = _label_set(config, config_dir)
    result = read_rows(path, config.input.format, _options(config))
    raw = registry.register_dataset(
        path.stem,
        result.rows,
        str(path.resolve()),
        result.format,
        meta={"malformed": len(result.errors)},
    )
    steps = []
    for step_name, params in config.step_list():
        params = dict(params)
        if step_name == "score":
            params.setdefault("method", config.method)
            if labels is not None and "labels" not in params and "labels_file" not in params:
                params["labels"] = labels
        steps.append((step_name, params))
    rows, logs = run_steps(result.rows, steps)
    card = build_card(name, _input_info(result), rows, logs, config.method, labels)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    splits: dict[str, list[Row]] = {}
    for row in rows:
        splits.setdefault(row.get("split", "train"), []).append(row)
    step_summary = [
        {
            "step": s["step"],
            "params": s["params"],
            "rows_in": s["rows_in"],
            "rows_out": s["rows_out"],
            "dropped": s["dropped"],
            "changed": s["changed"],
        }
        for s in card["steps"]
    ]
    ids: dict[str, int] = {}
    for split_name, split_rows in sorted(splits.items()):
        write_parquet(split_rows, out / f"{split_name}.parquet")
        version_name = name if len(splits) == 1 else f"{name}-{split_name}"
        record = store_version(
            version_name,
            split_rows,
            result.format,
            parent_id=raw.id,
            meta={
                "split": split_name,
                "steps": step_summary,
                "curated_from": raw.id,
                "card": str((out / "card.html").resolve()),
                "warnings": card["warnings"],
            },
        )
        ids[split_name] = record.id
    card["output"]["dataset_ids"] = ids
    card["input"]["dataset_id"] = raw.id
    _write_text_atomic(out / "card.json", json.dumps(card, indent=2, default=str))
    _write_text_atomic(out / "card.html", render_card_html(card))
    _write_text_atomic(
        out / "curate.yaml", yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    )
    return CurateResult(rows, logs, card, out, ids, raw.id)


def inspect(path: str | Path, fmt: str = "auto", model: str | None = None) -> dict[str, Any]:
    """Report-only card for a raw file: every check runs on the same input, nothing dropped."""
    from tuneloop.data.pipeline import run_steps
    from tuneloop.models.bundled import is_cached

    result = read_rows(path, fmt)
    tokenizer = model or ("smollm2-135m-instruct" if is_cached("smollm2-135m-instruct") else None)
    checks: list[tuple[str, dict[str, Any]]] = [
        ("validate", {"model": tokenizer}),
        ("redact_pii", {"mode": "report"}),
        ("dedup", {}),
        ("preference_checks", {"drop": False}),
        ("score", {"max_repetition": 1.0}),
    ]
    logs = []
    for check in checks:
        _, (log,) = run_steps(result.rows, [check], progress=False)
        logs.append(log)
    return build_card(Path(path).name, _input_info(result), result.rows, logs)
