"""Exporting a trained run: the adapter as is, a merged full model, and a model card.

The adapter directory already has the layout peft and vLLM load (`adapter_config.json` +
`adapter_model.safetensors`). A merged model folds the adapter into the base weights so
any tool that knows only plain transformers checkpoints can serve it. Both get a README.md
model card with the lineage: base model, dataset versions, recipe, metrics.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from tuneloop.errors import ModelError


def model_card(
    name: str, recipe: dict[str, Any], meta: dict[str, Any], metrics: dict[str, Any]
) -> str:
    """Markdown model card: what it is, what it was trained on, how, and how well."""
    datasets = meta.get("datasets", {})
    lines = [
        f"# {name}",
        "",
        f"Fine-tuned with tuneloop {meta.get('package_version', '?')} "
        f"(run {meta.get('run_id')}, git commit {meta.get('git_commit') or 'unknown'}).",
        "",
        "## Lineage",
        "",
        f"- Base model: `{meta.get('base_model')}`",
        f"- Method: {recipe.get('method')}, adapter {recipe.get('adapter', {}).get('type')}",
    ]
    for role, dataset_id in datasets.items():
        lines.append(
            f"- {role} data: registry dataset {dataset_id} (`tuneloop data show {dataset_id}`)"
        )
    fmt = meta.get("prompt_format") or {}
    if fmt:
        lines += [
            f"- Prompt format: {fmt.get('format')}"
            + (f", system prompt: {fmt['system_prompt']!r}" if fmt.get("system_prompt") else ""),
        ]
        if fmt.get("template"):
            lines.append(f"- Classification template: {fmt['template']!r}")
        if fmt.get("labels"):
            lines.append(f"- Labels ({len(fmt['labels'])}): {', '.join(fmt['labels'][:20])}")
        if fmt.get("label_hints"):
            hints = fmt["label_hints"]
            lines.append(
                f"- Label hints: each prompt ends with the {hints['k']} labels nearest by "
                f"{hints['embedder']} among {hints['rows']} training rows (index: "
                f"`{hints['index']}`); serve it with the same hints"
            )
    lines += ["", "## Metrics", "", "| metric | value |", "| --- | --- |"]
    for key, value in metrics.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"| {key} | {shown} |")
    lines += [
        "",
        "## Recipe",
        "",
        "```yaml",
        yaml.safe_dump(recipe, sort_keys=False).rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def write_model_card(
    model_dir: Path, recipe: Any, meta: dict[str, Any], metrics: dict[str, Any]
) -> Path:
    data = recipe.model_dump(mode="json") if hasattr(recipe, "model_dump") else dict(recipe)
    path = model_dir / "README.md"
    path.write_text(model_card(data.get("name", "model"), data, meta, metrics), encoding="utf-8")
    return path


def export_run(ref: str, out: str | Path, merged: bool = True) -> dict[str, Path]:
    """Copy a run's model to `out/adapter` (LoRA runs) and write `out/merged` (merged=True).

    Written to temporary directories and renamed, like every tuneloop artifact.
    """
    import torch

    from tuneloop import registry
    from tuneloop.models.resolve import load_model, load_tokenizer, resolve
    from tuneloop.train.common import save_model

    resolved = resolve(ref)
    if resolved.run_id is None:
        raise ModelError(f"{ref!r} is not a run; export takes run:ID")
    run = registry.get_run(resolved.run_id)
    run_dir = Path(run.run_dir or "")
    meta = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    source = Path(resolved.adapter or resolved.base)
    if resolved.adapter:
        target = out / "adapter"
        staging = out / ".adapter.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(source, staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
        written["adapter"] = target
    if merged or not resolved.adapter:
        model = load_model(resolved, dtype=torch.float32, merge=True)
        tokenizer = load_tokenizer(
            str(source) if (source / "tokenizer_config.json").is_file() else resolved.base
        )
        save_model(model, tokenizer, out / "merged", resolved.base)
        written["merged"] = out / "merged"
    for path in written.values():
        write_model_card(path, run.recipe, meta, run.metrics or {})
    return written
