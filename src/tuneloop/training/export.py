"""Exporting a trained run: the adapter as is, a merged full model, and a model card.

The adapter directory already has the layout peft and vLLM load (`adapter_config.json` +
`adapter_model.safetensors`). A merged model folds the adapter into the base weights so
any tool that knows only plain transformers checkpoints can serve it. Both get a README.md
model card with the lineage: base model, dataset versions, recipe, metrics, under the
Hugging Face metadata header that hubs and tools read.

An export is meant to leave the machine, so it names its base portably: a run's own
`adapter_config.json` points at the base by the local path it was trained from, which no
other machine can resolve; the exported one names the bundled model by its hub id, or the
base as the user wrote it in the recipe, or what `base_model=` (`--base-model`) says.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tuneloop.errors import ModelError
from tuneloop.files import (
    MARKER,
    atomic_write_json,
    atomic_write_text,
    check_replaceable,
    staged_dir,
)

KIND = "export"

# What an export writes into `adapter/` or `merged/`, by name, for a folder whose marker does
# not list its files: with `force`, these (and shards) are replaced and nothing else is.
_EXPORT_NAMES = frozenset(
    {
        "adapter_config.json",
        "adapter_model.safetensors",
        "adapter_model.bin",
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "tokenizer.model",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.json",
        "merges.txt",
        "chat_template.jinja",
        "chat_template.json",
        "README.md",
        MARKER,
    }
)
_SHARD = re.compile(r"^(model|pytorch_model)-\d{5}-of-\d{5}\.(safetensors|bin)$")


def portable_base(reference: str, base_path: str, override: str | None = None) -> str:
    """The base-model reference an export writes: one other machines can resolve.

    `reference` is the recipe's `model` as the user wrote it, `base_path` the folder the run
    loaded. The order: `override` as given; the bundled model's hub id (named, or found by
    its cached folder); the user's reference (a hub id stays one; a path they chose stays
    that path); for a base given as `run:ID`, the base that run's adapter names.
    """
    from tuneloop.models import bundled

    if override:
        return override
    for candidate in (reference, base_path):
        spec = bundled.bundled_spec(candidate)
        if spec is not None:
            return spec.hub_id
    return base_path if reference.startswith("run:") else reference


def is_hub_id(reference: str) -> bool:
    """`org/name` that is not a folder here: what a hub model card may name as its base."""
    from tuneloop.models.resolve import _HUB_ID

    return bool(_HUB_ID.match(reference)) and not Path(reference).expanduser().exists()


def card_metadata(recipe: dict[str, Any], base_model: str, library_name: str) -> dict[str, Any]:
    """The model card's YAML header (Hugging Face model card metadata).

    `datasets` is left out: tuneloop's datasets are local registry versions with no hub id,
    and a hub links any name given there to a hub dataset of that name.
    """
    from tuneloop.models import bundled

    adapter = (recipe.get("adapter") or {}).get("type")
    header: dict[str, Any] = {}
    if is_hub_id(base_model):
        header["base_model"] = base_model
    header["library_name"] = library_name
    spec = next((b for b in bundled.BUNDLED.values() if b.hub_id == base_model), None)
    if spec is not None:
        header["license"] = spec.license
    header["pipeline_tag"] = "text-generation"
    tags = ["tuneloop", recipe.get("method"), adapter]
    header["tags"] = [t for i, t in enumerate(tags) if t and t not in tags[:i]]
    return header


def model_card(
    name: str,
    recipe: dict[str, Any],
    meta: dict[str, Any],
    metrics: dict[str, Any],
    *,
    base_model: str | None = None,
    library_name: str = "peft",
) -> str:
    """Markdown model card: what it is, what it was trained on, how, and how well.

    `base_model` is the portable base reference (default: the recipe's `model`).
    """
    datasets = meta.get("datasets", {})
    trained_from = meta.get("base_model") or recipe.get("model")
    base_model = base_model or str(trained_from)
    header = yaml.safe_dump(card_metadata(recipe, base_model, library_name), sort_keys=False)
    base_line = f"- Base model: `{base_model}`"
    if trained_from and trained_from != base_model:
        base_line += f" (trained from `{trained_from}`)"
    lines = [
        "---",
        header.rstrip(),
        "---",
        "",
        f"# {name}",
        "",
        f"Fine-tuned with tuneloop {meta.get('package_version', '?')} "
        f"(run {meta.get('run_id')}, git commit {meta.get('git_commit') or 'unknown'}).",
        "",
        "## Lineage",
        "",
        base_line,
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
    model_dir: Path,
    recipe: Any,
    meta: dict[str, Any],
    metrics: dict[str, Any],
    *,
    base_model: str | None = None,
) -> Path:
    """Write `model_dir/README.md`; the header says peft for an adapter folder."""
    data = recipe.model_dump(mode="json") if hasattr(recipe, "model_dump") else dict(recipe)
    if base_model is None:
        reference = str(data.get("model") or meta.get("base_model") or "")
        base_model = portable_base(reference, str(meta.get("base_model_path") or reference))
    library = "peft" if (model_dir / "adapter_config.json").is_file() else "transformers"
    path = model_dir / "README.md"
    text = model_card(
        data.get("name", "model"), data, meta, metrics, base_model=base_model, library_name=library
    )
    atomic_write_text(path, text)
    return path


def export_run(
    ref: str,
    out: str | Path,
    merged: bool = True,
    *,
    force: bool = False,
    base_model: str | None = None,
) -> dict[str, Path]:
    """Write a run's adapter to `out/adapter` (LoRA runs) and a merged model to `out/merged`.

    A target folder that holds files an export did not write is refused unless `force`;
    even then only the files an export writes are replaced, the user's others stay.
    `base_model` names the base in the adapter and the cards (default: `portable_base`).
    """
    import torch

    from tuneloop import registry
    from tuneloop.models.resolve import load_model, load_tokenizer, resolve

    resolved = resolve(ref)
    if resolved.run_id is None:
        raise ModelError(f"{ref!r} is not a run; export takes run:ID")
    run = registry.get_run(resolved.run_id)
    run_dir = Path(run.run_dir or "")
    meta = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    out = Path(out)
    targets: dict[str, Path] = {}
    if resolved.adapter:
        targets["adapter"] = out / "adapter"
    if merged or not resolved.adapter:
        targets["merged"] = out / "merged"
    for target in targets.values():  # refuse before any model is loaded or file written
        check_replaceable(target, KIND, force=force)
    reference = str(run.recipe.get("model") or resolved.base)
    portable = portable_base(reference, resolved.base, base_model)
    metrics = run.metrics or {}
    source = Path(resolved.adapter or resolved.base)

    def fill_adapter(folder: Path) -> None:
        shutil.copytree(source, folder, dirs_exist_ok=True)
        config_path = folder / "adapter_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["base_model_name_or_path"] = portable
        config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        write_model_card(folder, run.recipe, meta, metrics, base_model=portable)

    if "adapter" in targets:
        _install(targets["adapter"], fill_adapter)
    if "merged" in targets:
        model = load_model(resolved, dtype=torch.float32, merge=True)
        tokenizer = load_tokenizer(
            str(source) if (source / "tokenizer_config.json").is_file() else resolved.base
        )

        def fill_merged(folder: Path) -> None:
            model.save_pretrained(folder, safe_serialization=True)
            tokenizer.save_pretrained(folder)
            write_model_card(folder, run.recipe, meta, metrics, base_model=portable)

        _install(targets["merged"], fill_merged)
    return targets


def _install(target: Path, fill: Callable[[Path], None]) -> None:
    """Write `target` through `fill(folder)`, replacing only what an export wrote there.

    An absent or empty target is filled beside it and renamed in whole. A target that
    holds other files (the user's, kept under `force`, or added to an earlier export) keeps
    them: the earlier export's files go, the new ones are moved in, and the marker, written
    last, lists them. A crash part-way leaves no marker, so the folder is not taken for a
    whole export again without `force`.
    """
    if not target.exists() or not any(target.iterdir()):
        with staged_dir(target) as staging:
            fill(staging)
            _mark(staging, {p.name for p in staging.iterdir()})
        return
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.", dir=target.parent) as tmp:
        staging = Path(tmp)
        fill(staging)
        names = {p.name for p in staging.iterdir()}
        replaced = _export_files(target) | names
        (target / MARKER).unlink(missing_ok=True)
        for name in sorted(replaced):
            path = target / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
        for name in sorted(names):
            os.replace(staging / name, target / name)
        _mark(target, names)


def _mark(folder: Path, names: set[str]) -> None:
    """The export marker (`files.write_marker`'s format) plus the names the export wrote,
    so the next export replaces exactly those and leaves any file added since."""
    atomic_write_json(folder / MARKER, {"kind": KIND, "files": sorted(names - {MARKER})})


def _export_files(folder: Path) -> set[str]:
    """The names in `folder` an earlier export wrote: those its marker lists, or for a
    folder without that list, the names an export writes."""
    try:
        recorded = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        recorded = None
    if isinstance(recorded, dict) and recorded.get("kind") == KIND:
        listed = recorded.get("files")
        if isinstance(listed, list):  # plain names only: a marker cannot point outside
            return {
                n
                for n in listed
                if isinstance(n, str) and n not in ("", ".", "..") and n == Path(n).name
            }
    present = {p.name for p in folder.iterdir()}
    return {n for n in present if n in _EXPORT_NAMES or _SHARD.match(n)}
