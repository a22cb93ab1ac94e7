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
        "Modelfile",
        "parity.json",
        MARKER,
    }
)
# shards of a merged model, and the GGUF file an export names NAME-QUANT.gguf
_EXPORT_PATTERN = re.compile(
    r"^((model|pytorch_model)-\d{5}-of-\d{5}\.(safetensors|bin)|[\w.-]+-(f16|q8_0)\.gguf)$"
)


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
    library_name: str | None = None,
) -> Path:
    """Write `model_dir/README.md`; the header says peft for an adapter folder."""
    data = recipe.model_dump(mode="json") if hasattr(recipe, "model_dump") else dict(recipe)
    if base_model is None:
        reference = str(data.get("model") or meta.get("base_model") or "")
        base_model = portable_base(reference, str(meta.get("base_model_path") or reference))
    library = library_name or (
        "peft" if (model_dir / "adapter_config.json").is_file() else "transformers"
    )
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
    gguf: str | None = None,
) -> dict[str, Path]:
    """Write a run's adapter to `out/adapter` (LoRA runs) and a merged model to `out/merged`;
    with `gguf` (a quant: f16 or q8_0) also a GGUF file and an Ollama Modelfile to
    `out/gguf`, after the parity check (`check_gguf`) passes.

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
    if gguf is not None:
        from tuneloop.models.gguf import QUANTS

        if gguf not in QUANTS:
            raise ModelError(f"GGUF quant must be one of {', '.join(QUANTS)}, not {gguf!r}")
        targets["gguf"] = out / "gguf"
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
    if "merged" in targets or "gguf" in targets:
        model = load_model(resolved, dtype=torch.float32, merge=True)
        tokenizer = load_tokenizer(
            str(source) if (source / "tokenizer_config.json").is_file() else resolved.base
        )

        def fill_merged(folder: Path) -> None:
            model.save_pretrained(folder, safe_serialization=True)
            tokenizer.save_pretrained(folder)
            write_model_card(folder, run.recipe, meta, metrics, base_model=portable)

        def fill_gguf(folder: Path) -> None:
            write_gguf_folder(folder, model, tokenizer, resolved, run.name, str(gguf))
            write_model_card(
                folder, run.recipe, meta, metrics, base_model=portable, library_name="gguf"
            )

        if "merged" in targets:
            _install(targets["merged"], fill_merged)
        if "gguf" in targets:
            _install(targets["gguf"], fill_gguf)
    return targets


# One conversation the parity check renders every way the model will meet it.
_PARITY_CHAT = [
    {"role": "user", "content": "Hi! Do you ship to Germany? {{ braces }} stay text."},
    {"role": "assistant", "content": "We ship to the US and Canada only."},
    {"role": "user", "content": "And how long does a refund take?"},
]
_PARITY_ANSWER = "Refunds reach your card within 5 to 7 business days."
# logits of the GGUF read back against the merged model: the largest difference as a share
# of the reference's logit range, and the share of positions whose top token agrees
_LOGIT_LIMITS = {"f16": (0.01, 0.99), "q8_0": (0.05, 0.9)}


def write_gguf_folder(
    folder: Path, model: Any, tokenizer: Any, resolved: Any, name: str, quant: str
) -> dict[str, Any]:
    """`NAME-QUANT.gguf`, `Modelfile` and `parity.json` into `folder`, or ModelError naming
    the check that failed (the caller's staging folder is then discarded)."""
    from tuneloop.models import gguf as gg
    from tuneloop.training.common import slug

    filename = f"{slug(name) or 'model'}-{quant}.gguf"
    path = folder / filename
    info = gg.write_gguf(model, tokenizer, path, quant=quant, name=name)
    report = check_gguf(path, model, tokenizer, resolved, quant)
    text = gg.modelfile(filename, report.pop("ollama_template"), report["system"], report["stops"])
    atomic_write_text(folder / "Modelfile", text)
    report["file"] = {"name": filename, **info}
    atomic_write_json(folder / "parity.json", report)
    return report


def check_gguf(path: Path, model: Any, tokenizer: Any, resolved: Any, quant: str) -> dict[str, Any]:
    """Render one conversation with the training template, the GGUF's template (what
    llama.cpp uses), the Ollama template and the server's prompting; compare the tokens,
    the stop tokens and the logits. ModelError on the first difference."""
    from tuneloop.data.prompting import Prompting
    from tuneloop.models import gguf as gg
    from tuneloop.models.generate import encode_prompt
    from tuneloop.training.tokenize import render_chat

    def render(messages: list[dict[str, str]], generation: bool) -> str:
        return render_chat(tokenizer, messages, generation_prompt=generation)

    def ids(text: str, tok: Any = tokenizer) -> list[int]:
        return list(tok(text, add_special_tokens=False)["input_ids"])

    parts = gg.template_parts(render)
    prompting = Prompting.of(resolved)
    system = prompting.system_prompt or parts.default_system
    chat = _PARITY_CHAT
    trained = prompting.with_system([chat])[0]  # how training rendered a row of this run
    training_text = render(trained, True)
    template = gg.ollama_template(parts)
    with_system = [{"role": "system", "content": system}, *chat] if system else chat
    ollama_text = gg.render_go_template(template, with_system)
    if ollama_text != training_text:
        raise ModelError(
            "the Ollama template renders the conversation differently from training:\n"
            f"training: {training_text!r}\nollama:   {ollama_text!r}"
        )
    gguf_model, gguf_tokenizer = gg.load_gguf(path)
    gguf_text = gguf_tokenizer.apply_chat_template(
        trained, tokenize=False, add_generation_prompt=True
    )
    if gguf_text != training_text:
        raise ModelError(
            "the GGUF's chat template renders the conversation differently from training:\n"
            f"training: {training_text!r}\ngguf:     {gguf_text!r}"
        )
    reference_ids = ids(training_text)
    if ids(training_text, gguf_tokenizer) != reference_ids:
        raise ModelError("the GGUF's tokenizer splits the conversation into different tokens")
    warnings = []
    served = encode_prompt(tokenizer, prompting.prepare([chat])[0])
    if served != reference_ids:
        warnings.append(
            "the server adds label hints to this run's prompts, which llama.cpp and Ollama "
            "do not: the exported model answers without them"
            if prompting.hints is not None
            else "the server renders this run's prompts differently from training"
        )
    if prompting.rerank is not None:
        warnings.append(
            "this run answers by ranking its labels when served by tuneloop; llama.cpp and "
            "Ollama generate free text instead"
        )
    eos = tokenizer.eos_token
    closing = ids(parts.after["assistant"])
    if tokenizer.eos_token_id not in closing:
        raise ModelError(
            f"the template ends an answer with {parts.after['assistant']!r}, which does not "
            f"hold the end token {eos!r}: the exported model would not stop"
        )
    answer_ids = ids(_PARITY_ANSWER + parts.after["assistant"])
    logits = gg.compare_logits(model, gguf_model, reference_ids + answer_ids)
    max_share, min_agreement = _LOGIT_LIMITS[quant]
    share = logits["max_abs_diff"] / max(logits["logit_range"], 1e-6)
    logits["max_diff_share"] = round(share, 5)
    if share > max_share or logits["top1_agreement"] < min_agreement:
        raise ModelError(
            f"the GGUF read back by transformers gives different logits: largest difference "
            f"{share:.2%} of the logit range (limit {max_share:.0%}), top token agrees at "
            f"{logits['top1_agreement']:.1%} of positions (limit {min_agreement:.0%})"
        )
    return {
        "quant": quant,
        "checks": {
            "templates": "training, GGUF (llama.cpp) and Ollama render the conversation alike",
            "tokens": len(reference_ids),
            "stop": f"answers end with {parts.after['assistant']!r}, holding {eos!r}",
            "logits": logits,
        },
        "warnings": warnings,
        "system": system,
        "stops": [eos],
        "ollama_template": template,
    }


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
    return {n for n in present if n in _EXPORT_NAMES or _EXPORT_PATTERN.match(n)}
