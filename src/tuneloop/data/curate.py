"""Curate a raw file into a versioned dataset with a data card.

read (malformed rows counted, good rows kept) -> steps from the config, in order ->
Parquet per split (output folder and the registry's immutable store) -> card.json/html.
`inspect` runs report-only checks on the raw rows and writes nothing to the registry.
"""

from __future__ import annotations

import json
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


def curate(
    path: str | Path,
    config: CurateConfig,
    out_dir: str | Path,
    name: str | None = None,
    config_dir: Path | None = None,
    *,
    force: bool = False,
) -> CurateResult:
    """Run the pipeline and store every split as a dataset version whose parent is the input.

    The output folder is written whole: everything goes to a temporary folder beside it,
    which then replaces it, so it never mixes this dataset's files with an earlier one's.
    A non-empty folder that an earlier curate did not write is refused (`OutputExists`,
    before any work) unless `force`, which replaces it and everything in it.
    """
    from tuneloop import registry
    from tuneloop.data.pipeline import run_steps
    from tuneloop.data.store import store_version, write_parquet
    from tuneloop.files import atomic_write_text, check_replaceable, staged_dir, write_marker

    check_steps(config)
    out = Path(out_dir)
    check_replaceable(out, "curate", force=force)
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
    input_info = _input_info(result)
    steps = []
    for step_name, params in config.step_list():
        params = dict(params)
        if step_name == "score":
            params.setdefault("method", config.method)
            if labels is not None and "labels" not in params and "labels_file" not in params:
                params["labels"] = labels
        steps.append((step_name, params))
    # handed over, not kept: rows a step replaces can be freed while later steps run
    rows, logs = run_steps(_take_rows(result), steps)
    card = build_card(name, input_info, rows, logs, config.method, labels)
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
    with staged_dir(out) as staging:
        for split_name, split_rows in sorted(splits.items()):
            written = staging / f"{split_name}.parquet"
            write_parquet(split_rows, written)
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
                written=written,
            )
            ids[split_name] = record.id
        card["output"]["dataset_ids"] = ids
        card["input"]["dataset_id"] = raw.id
        atomic_write_text(staging / "card.json", json.dumps(card, indent=2, default=str))
        atomic_write_text(staging / "card.html", render_card_html(card))
        atomic_write_text(
            staging / "curate.yaml",
            yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False),
        )
        write_marker(staging, "curate")
    return CurateResult(rows, logs, card, out, ids, raw.id)


def _take_rows(result: ReadResult) -> list[Row]:
    """The read rows, no longer held by `result` (its count and kind are in the card)."""
    rows, result.rows = result.rows, []
    return rows


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
