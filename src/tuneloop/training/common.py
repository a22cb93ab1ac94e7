"""Pieces every training method shares: data references, the run record, the model setup,
the final save. Small functions, so each method's module reads top to bottom."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop import __version__
from tuneloop.config import Recipe, dump_recipe, runs_dir
from tuneloop.data.formats import DEFAULT_CLASSIFICATION_TEMPLATE, RowOptions
from tuneloop.errors import RecipeError, TrainingError


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "run"


def data_path(ref: str) -> str:
    """A data reference as a path: `dataset:ID` is a stored dataset version."""
    if ref.startswith("dataset:"):
        from tuneloop import registry

        try:
            dataset_id = int(ref.split(":", 1)[1])
        except ValueError:
            raise RecipeError(f"bad dataset reference {ref!r}; expected dataset:ID") from None
        return registry.get_dataset(dataset_id).path
    return ref


def record_data(ref: str, path: str, rows: list[Any], fmt: str) -> int:
    """The registry id of the data a run reads: a `dataset:ID` reference is that version
    itself (so a run trained on a studio or traffic export traces back to it), a file is
    registered as a version of its own source."""
    from tuneloop import registry

    if ref.startswith("dataset:"):
        return registry.get_dataset(int(ref.split(":", 1)[1])).id
    return registry.register_dataset(Path(path).stem, rows, path, fmt).id


def row_options(recipe: Recipe) -> RowOptions:
    """How this recipe turns raw rows into conversations (also recorded in the run)."""
    d = recipe.data
    return RowOptions(
        system_prompt=d.system_prompt,
        classification_template=d.template or DEFAULT_CLASSIFICATION_TEMPLATE,
        text_field=d.text_field,
        label_field=d.label_field,
    )


def label_set(recipe: Recipe) -> list[str] | None:
    labels = recipe.data.labels
    if labels is None or isinstance(labels, list):
        return labels
    from tuneloop.data.score import load_labels

    return load_labels(labels)


def prompt_format(
    recipe: Recipe,
    data_format: str,
    labels: list[str] | None,
    conversations: list[Any] | None = None,
) -> dict[str, Any]:
    """Everything needed to turn new rows into prompts exactly as in training.

    `system_prompt_in_data`: the system message every training row opens with, when they
    all share one (support data usually does). Serving and export add it to requests that
    bring none, as `system_prompt` would be: otherwise a request without it meets the
    template's default system message, which the run never saw in training.
    """
    options = row_options(recipe)
    return {
        "format": data_format,
        "system_prompt": options.system_prompt,
        "system_prompt_in_data": shared_system_prompt(conversations or []),
        "template": options.classification_template if data_format == "classification" else None,
        "text_field": options.text_field,
        "label_field": options.label_field,
        "labels": labels,
        "train_on": recipe.data.train_on,
        "max_length": recipe.data.max_length,
    }


def shared_system_prompt(conversations: list[Any]) -> str | None:
    """The system message all `conversations` open with, or None (none, or several)."""
    first = {c[0]["content"] if c and c[0].get("role") == "system" else None for c in conversations}
    return first.pop() if len(first) == 1 and None not in first else None


def stratified_split(
    labels: list[str | None], fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """(train, validation) indices: `fraction` of each label group (of all rows if unlabelled).

    Each label with at least two rows gives at least one row to validation, so every class
    is measured; a label with one row stays in train.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    groups: dict[str | None, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    train, val = [], []
    for key in sorted(groups, key=str):
        members = groups[key]
        order = [members[j] for j in rng.permutation(len(members))]
        n_val = round(fraction * len(members))
        if n_val == 0 and len(members) >= 2 and key is not None:
            n_val = 1
        val += order[:n_val]
        train += order[n_val:]
    return sorted(train), sorted(val)


@dataclass
class PreferenceData:
    """A preference method's rows: training and validation, and their dataset versions."""

    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    datasets: dict[str, int]
    path: str
    format: str


def preference_data(recipe: Recipe, main: bool, kinds: tuple[str, ...]) -> PreferenceData:
    """Read `data.train` (and `data.eval`) strictly as preference rows of `kinds` (paired
    `preference`, unpaired `kto`), hold out `data.validation_split` when there is no eval
    file (seeded by `training.seed`, so every method of one recipe family sees the same
    split), apply `data.fraction`, and register the files as dataset versions (rank 0)."""
    from tuneloop.data.readers import read_rows
    from tuneloop.errors import DataError

    d = recipe.data
    options = row_options(recipe)

    def read(path: str) -> Any:
        result = read_rows(path, "auto", options=options, strict=True)
        for i, row in enumerate(result.rows):
            if row.get("kind") not in kinds:
                raise DataError(
                    f"{path}: row {i} ({row.get('source', '?')}) is a {row.get('kind')!r} row; "
                    f"method {recipe.method} trains on {' or '.join(kinds)} rows"
                    + (
                        " (set alignment.pairs_to_unpaired: true to use pairs for kto)"
                        if recipe.method == "kto" and row.get("kind") == "preference"
                        else ""
                    )
                )
        return result

    train_path = data_path(d.train)
    train = read(train_path)
    rows, validation = list(train.rows), []
    datasets: dict[str, int] = {}
    if main:
        datasets["train"] = record_data(d.train, train_path, train.rows, train.format)
    if d.eval:
        eval_path = data_path(d.eval)
        held = read(eval_path)
        validation = list(held.rows)
        if main:
            datasets["eval"] = record_data(d.eval, eval_path, held.rows, held.format)
    elif d.validation_split > 0:
        tr, va = stratified_split([None] * len(rows), d.validation_split, recipe.training.seed)
        rows, validation = [rows[i] for i in tr], [rows[i] for i in va]
    if d.fraction < 1.0:
        _, keep = stratified_split([None] * len(rows), d.fraction, recipe.training.seed + 1)
        rows = [rows[i] for i in keep]
    return PreferenceData(rows, validation, datasets, train_path, train.format)


def preference_run(
    recipe: Recipe,
    data: PreferenceData,
    resolved: Any,
    run_dir: str | Path | None,
    resume: str | Path | bool,
    main: bool,
    keep_validation: bool = False,
    **extra: Any,
) -> tuple[Any, Path, dict[str, Any]]:
    """The run record, directory and `run.json` fields every preference method starts
    from. keep_validation: write the held-out pairs to the run's `validation.jsonl`, so
    `tuneloop eval --data` or `judge agreement --pairs` can score them later."""
    run, run_path = run_for(recipe, data.datasets, resolved.base, run_dir, resume)
    d = recipe.data
    meta = run_meta(
        run,
        recipe,
        resolved.base,
        datasets=data.datasets,
        data_format=data.format,
        validation_split=d.validation_split if not d.eval else None,
        **extra,
    )
    if keep_validation and main and data.validation and not d.eval:
        from tuneloop.files import atomic_write_jsonl

        atomic_write_jsonl(
            run_path / "validation.jsonl",
            ({k: r[k] for k in ("prompt", "chosen", "rejected")} for r in data.validation),
        )
        meta["validation_file"] = str(run_path / "validation.jsonl")
    return run, run_path, meta


def limit_per_label(labels: list[str | None], limit: int, seed: int) -> list[int]:
    """Indices of at most `limit` rows per label (seeded choice, kept in file order)."""
    import numpy as np

    rng = np.random.default_rng([seed, 1])
    groups: dict[str | None, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    keep: list[int] = []
    for key in sorted(groups, key=str):
        members = groups[key]
        keep += [members[j] for j in rng.permutation(len(members))[:limit]]
    return sorted(keep)


def write_conversations(path: Path, conversations: list[Any], labels: list[Any]) -> None:
    """JSONL of chat rows (with their label), written atomically: a held-out split, so the
    run's validation data can be evaluated later with `tuneloop eval`."""
    from tuneloop.files import atomic_write_jsonl

    atomic_write_jsonl(
        path,
        (
            {"messages": conv} if label is None else {"messages": conv, "label": label}
            for conv, label in zip(conversations, labels, strict=True)
        ),
    )


def check_runtime(recipe: Recipe) -> None:
    """Refuse a recipe this machine cannot run, before any data or model is loaded."""
    import torch

    if recipe.adapter.type == "qlora":
        if not torch.cuda.is_available():
            raise TrainingError(
                "adapter.type qlora needs a CUDA GPU: its 4-bit NF4 base weights use "
                "bitsandbytes kernels that do not run on CPU. Use adapter.type lora on this "
                "machine (the same adapters on a full-precision base)."
            )
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise TrainingError(
                "adapter.type qlora needs bitsandbytes: pip install bitsandbytes"
            ) from None
    gpu = torch.cuda.is_available()
    if recipe.training.precision == "bf16" and gpu and not torch.cuda.is_bf16_supported():
        raise TrainingError("training.precision bf16: this GPU does not support bf16")


def is_main_process() -> bool:
    """Rank 0 of a multi-process launch (torchrun/accelerate set RANK), or a lone process."""
    import os

    return int(os.environ.get("RANK", "0")) == 0


def use_bf16(recipe: Recipe) -> bool:
    import torch

    if recipe.training.precision == "bf16":
        return True
    if recipe.training.precision == "auto":
        if torch.cuda.is_available():
            return bool(torch.cuda.is_bf16_supported())
        return cpu_has_bf16()
    return False


def learning_rate(recipe: Recipe, total_params: int) -> float:
    """The recipe's learning rate, or the default for its adapter and model size.

    Why these: a low-rank update needs a larger step than full fine-tuning to move as far,
    and small models tolerate larger steps than big ones. On Banking77 with the bundled 135M
    model, LoRA at 2e-4 (the common default) left accuracy far below 1e-3 after the same
    epochs, and full fine-tuning at 1e-4 matched LoRA at 1e-3 (docs/experiments.md). Above
    1B parameters the usual published settings (2e-4 LoRA, 2e-5 full) are the safe side.
    """
    if recipe.training.learning_rate is not None:
        return recipe.training.learning_rate
    small = total_params < 1_000_000_000
    if recipe.adapter.type in ("lora", "qlora"):
        return 1e-3 if small else 2e-4
    return 1e-4 if small else 2e-5


def record_setup(recipe: Recipe, run_path: Path, meta: dict[str, Any], main: bool) -> float:
    """The run's learning rate (from `meta["model"]`'s parameter count when the recipe
    leaves it unset), recorded in `meta`, and `run.json` written (rank 0): the last step
    of every method's setup before training starts."""
    lr = learning_rate(recipe, meta["model"]["total_params"])
    meta["learning_rate"] = lr
    if main:
        write_json(run_path / "run.json", meta)
    return lr


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX).

    Without such units, bf16 autocast on CPU is emulated and slower than fp32, so `auto`
    only picks it where it pays: on this project's Zen 4 machine a LoRA step of the bundled
    model runs 1.5x faster under bf16 autocast (docs/experiments.md).
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


# --- run directory and record --------------------------------------------------------------


def start_run(
    recipe: Recipe, datasets: dict[str, int], base_path: str, run_dir: str | Path | None
) -> tuple[Any, Path]:
    """Registry record + run directory with the resolved recipe."""
    from tuneloop import registry

    run = registry.start_run(
        name=recipe.name,
        kind=recipe.method,
        recipe=recipe.model_dump(mode="json"),
        base_model=recipe.model,
        datasets=datasets,
    )
    parent = Path(recipe.output_dir) if recipe.output_dir else runs_dir()
    run_path = Path(run_dir) if run_dir else parent / f"{run.id:04d}-{slug(recipe.name)}"
    run_path.mkdir(parents=True, exist_ok=True)
    registry.update_run(run.id, run_dir=str(run_path))
    dump_recipe(recipe, run_path / "recipe.yaml")
    return run, run_path


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write a run record (`run.json`) atomically: a crash leaves the old one or the new."""
    from tuneloop.files import atomic_write_json

    atomic_write_json(path, data)


def run_meta(run: Any, recipe: Recipe, base_path: str, **extra: Any) -> dict[str, Any]:
    return {
        "run_id": run.id,
        "method": recipe.method,
        "package_version": __version__,
        "git_commit": run.git_commit,
        "base_model": recipe.model,
        "base_model_path": base_path,
        **extra,
    }


def save_final(model: Any, tokenizer: Any, model_dir: Path, base_path: str) -> None:
    """The run's final model: refused if any weight is non-finite, else saved atomically."""
    check_finite(model)
    save_model(model, tokenizer, model_dir, base_path)


def record_failure(run_id: int, err: BaseException) -> None:
    """Mark the run interrupted (a checkpoint was saved) or failed, with the error."""
    from tuneloop import registry
    from tuneloop.errors import TrainingInterrupted

    status = "interrupted" if isinstance(err, TrainingInterrupted) else "failed"
    registry.update_run(run_id, status=status, error=f"{type(err).__name__}: {err}")


def model_kind(recipe: Recipe) -> str:
    """The registry kind of a run's final model: `reward` (a merged sequence-classification
    model, whatever the adapter), `adapter` (PEFT) or `full`."""
    if recipe.method == "reward":
        return "reward"
    return "adapter" if recipe.adapter.type in ("lora", "qlora") else "full"


def finish_run(
    run: Any,
    recipe: Recipe,
    model_dir: Path,
    meta: dict[str, Any],
    metrics: dict[str, Any],
    timings: dict[str, float],
    steps: int,
) -> None:
    """Model card, model record, run completed (rank 0 only)."""
    from tuneloop import registry
    from tuneloop.training.export import write_model_card

    write_model_card(model_dir, recipe, meta, metrics)
    registry.add_model(
        name=f"{recipe.name}-{run.id}",
        kind=model_kind(recipe),
        path=str(model_dir),
        base_model=recipe.model,
        run_id=run.id,
        step=steps,
    )
    registry.update_run(run.id, status="completed", metrics=metrics, timings=timings)


@dataclass
class TrainResult:
    run_id: int
    run_dir: Path
    model_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


@contextmanager
def recording(run_id: int, main: bool) -> Iterator[None]:
    """Run the body; if it raises, mark the run interrupted (a checkpoint was saved) or
    failed on rank 0, then re-raise. Every method wraps its model work in this."""
    try:
        yield
    except BaseException as err:
        if main:
            record_failure(run_id, err)
        raise


def fit(
    recipe: Recipe,
    run: Any,
    run_path: Path,
    model: Any,
    objective: Any,
    train: list[Any],
    validation: list[Any] | None,
    pad_id: int,
    learning_rate: float,
    resume: str | Path | bool = False,
    on_step: Any = None,
    desc: str = "training",
    general: tuple[list[Any], str] | None = None,
) -> Any:
    """The shared loop for one method's examples, its metrics streamed to the registry.
    general: tokenised general text and the starting model's key, for `training.ewc`."""
    from tuneloop import registry
    from tuneloop.training.loop import LoopConfig, run_loop

    return run_loop(
        model,
        train,
        LoopConfig.from_training(recipe.training, use_bf16(recipe), learning_rate),
        run_path,
        pad_id=pad_id,
        validation=validation or None,
        resume=resume_arg(resume),
        on_log=lambda entry: registry.add_run_metrics(run.id, entry),
        on_step=on_step,
        desc=desc,
        objective=objective,
        general=general,
    )


def complete(
    run: Any,
    recipe: Recipe,
    run_path: Path,
    meta: dict[str, Any],
    result: Any,
    timings: dict[str, float],
    started: float,
    main: bool,
    **extra_metrics: Any,
) -> TrainResult:
    """The epilogue every method shares: metrics, timings, model card and records (rank
    0), and the result the caller gets."""
    import time

    model_dir = run_path / "model"
    metrics = {**result.metrics(), **extra_metrics}
    timings["train_s"] = result.train_s
    timings["total_s"] = time.perf_counter() - started
    if main:
        finish_run(run, recipe, model_dir, meta, metrics, timings, result.steps)
    return TrainResult(
        run_id=run.id,
        run_dir=run_path,
        model_dir=model_dir,
        metrics=metrics,
        history=result.history,
        seconds=timings["total_s"],
    )


def resume_arg(resume: str | Path | bool) -> Path | bool:
    if resume is True or resume is False:
        return resume
    return Path(resume)


def _shared_run(
    recipe: Recipe, datasets: dict[str, int], base_path: str, run_dir: str | Path | None
) -> tuple[Any, Path]:
    """torchrun started every process itself (e.g. on several nodes, without `--nproc`):
    rank 0 creates the run and publishes its id and directory in torchrun's rendezvous
    store; every other rank reads them there, so all ranks train one run and only rank 0
    touches the registry (the other nodes need no access to it)."""
    from datetime import timedelta

    import torch.distributed as dist

    main = is_main_process()
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        is_master=not agent_store and main,
        timeout=timedelta(minutes=30),  # rank 0 may still be loading data
        multi_tenant=True,
    )
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    key = f"tuneloop/run/{os.environ.get('TORCHELASTIC_RUN_ID', 'none')}/{attempt}"
    if main:
        run, run_path = start_run(recipe, datasets, base_path, run_dir)
        shared = {"id": run.id, "dir": str(run_path), "git_commit": run.git_commit}
        store.set(key, json.dumps(shared))
        return run, run_path
    shared = json.loads(store.get(key))
    return _run_stub(shared["id"], shared["git_commit"]), Path(shared["dir"])


def _run_stub(run_id: int, git_commit: str | None) -> Any:
    """What a rank other than 0 needs of the run record (its id and commit, for run.json),
    without reading the registry, which other nodes may not reach."""
    from types import SimpleNamespace

    return SimpleNamespace(id=run_id, git_commit=git_commit)


def run_for(
    recipe: Recipe,
    datasets: dict[str, int],
    base_path: str,
    run_dir: str | Path | None,
    resume: str | Path | bool,
) -> tuple[Any, Path]:
    """A new run, the run a `--nproc` launcher created, or (resuming) the run in `run_dir`."""
    from tuneloop import registry
    from tuneloop.training.launch import LAUNCHED_RUN, LAUNCHED_RUN_DIR

    launched = os.environ.get(LAUNCHED_RUN)
    if launched and not resume:
        run_id = int(launched)
        if is_main_process():
            registry.link_datasets(run_id, datasets)
            registry.claim_run(run_id)  # the worker trains: its pid tells whether it lives
        return registry.get_run(run_id), Path(os.environ[LAUNCHED_RUN_DIR])
    from tuneloop.training.loop import launched_world

    if not resume and launched_world() > 1:
        return _shared_run(recipe, datasets, base_path, run_dir)
    if not resume:
        return start_run(recipe, datasets, base_path, run_dir)
    from tuneloop.errors import TrainingError

    if run_dir is None:
        if isinstance(resume, str | Path):  # `--from CHECKPOINT` without `--resume RUN`
            ckpt = Path(resume)
            run_guess = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else "RUN_DIR"
            raise TrainingError(
                f"--from picks a checkpoint of the run being resumed; name the run too: "
                f"--resume {run_guess} --from {ckpt} (or --resume run:ID)"
            )
        raise TrainingError("resume needs the run directory: pass --resume RUN_DIR or run:ID")
    meta = Path(run_dir) / "run.json"
    if not meta.is_file():
        raise TrainingError(f"{run_dir} is not a run directory (no run.json); nothing to resume")
    import json

    recorded = json.loads(meta.read_text(encoding="utf-8"))
    run_id = recorded["run_id"]
    if is_main_process():
        registry.claim_run(run_id)
        return registry.get_run(run_id), Path(run_dir)
    return _run_stub(run_id, recorded.get("git_commit")), Path(run_dir)


# --- model -------------------------------------------------------------------------------


def prepare_model(
    recipe: Recipe, resolved: Any, convert: Any = None, task_type: str = "CAUSAL_LM"
) -> tuple[Any, dict[str, Any]]:
    """The base model with the recipe's trainable parameters; returns (model, summary).

    convert: a function applied to the loaded (merged) causal model before adapters are
    added (a reward model replaces the output layer by a score head); task_type is then the
    PEFT task of the converted model (`SEQ_CLS` trains the head fully beside the adapters).
    """
    import torch

    from tuneloop.models.resolve import load_model

    a = recipe.adapter
    torch.manual_seed(recipe.training.seed)  # LoRA initialisation is part of the run's seed
    if a.type == "qlora":
        model = _load_4bit(resolved)
    else:
        model = load_model(resolved, dtype=torch.float32, merge=True)
    if convert is not None:
        model = convert(model)
    model.config.use_cache = False
    if a.type in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=a.r,
            lora_alpha=a.alpha,
            lora_dropout=a.dropout,
            target_modules=a.target_modules,
            use_rslora=a.rslora,
            use_dora=a.dora,
            task_type=task_type,
        )
        try:
            model = get_peft_model(model, config)
        except ValueError as err:  # e.g. target modules that do not exist
            raise RecipeError(f"adapter: {err}") from None
    elif a.type == "freeze":
        _freeze(model, a.train_top_layers or 0, a.train_modules)
    if recipe.training.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if a.type in ("lora", "qlora", "freeze"):
            model.enable_input_require_grads()
    model.train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    if trainable == 0:
        raise RecipeError("the recipe leaves no parameter trainable")
    return model, {"adapter": a.type, "trainable_params": trainable, "total_params": total}


def _load_4bit(resolved: Any) -> Any:
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from tuneloop.models.resolve import check_weights_format

    if resolved.adapter:
        raise RecipeError("qlora on top of a run's adapter: merge and export the run first")
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    check_weights_format(resolved)
    model = AutoModelForCausalLM.from_pretrained(
        resolved.base,
        quantization_config=quant,
        dtype=torch.bfloat16,
        device_map={"": 0},
        **resolved.pretrained_kwargs(),
    )
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def _blocks(model: Any) -> list[Any]:
    """The model's stack of transformer blocks (Llama/Mistral/Qwen/GPT-2 layouts)."""
    for path in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if obj is not None:
            return list(obj)
    raise RecipeError("adapter.train_top_layers: cannot find this model's transformer blocks")


def _freeze(model: Any, top_layers: int, modules: list[str]) -> None:
    for p in model.parameters():
        p.requires_grad_(False)
    if top_layers:
        blocks = _blocks(model)
        if top_layers > len(blocks):
            raise RecipeError(
                f"adapter.train_top_layers is {top_layers} but the model has {len(blocks)} blocks"
            )
        for block in blocks[-top_layers:]:
            for p in block.parameters():
                p.requires_grad_(True)
        norm = getattr(getattr(model, "model", None), "norm", None)
        if norm is not None:  # the final norm sits above the top block
            for p in norm.parameters():
                p.requires_grad_(True)
    names = dict(model.named_parameters())
    for wanted in modules:
        hits = [n for n in names if wanted in n]
        if not hits:
            raise RecipeError(
                f"adapter.train_modules: no parameter name contains {wanted!r} "
                f"(names look like {next(iter(names))!r})"
            )
        for n in hits:
            names[n].requires_grad_(True)


# --- saving --------------------------------------------------------------------------------


def save_model(model: Any, tokenizer: Any, target: Path, base_path: str) -> None:
    """Save the run's model so `target` is never half-written (`files.staged_dir`).

    A LoRA model is saved as a PEFT adapter (`adapter_config.json` +
    `adapter_model.safetensors`, loadable by peft and vLLM) pointing at its base by the
    local path the run loaded: the run reloads it from there (eval, serve, resume). Copies
    meant for other machines name the base portably instead (`tuneloop export`).
    """
    from tuneloop.files import atomic_write_json, staged_dir

    with staged_dir(target) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        cfg = staging / "adapter_config.json"
        if cfg.is_file():
            data = json.loads(cfg.read_text(encoding="utf-8"))
            data["base_model_name_or_path"] = base_path
            atomic_write_json(cfg, data)


def check_finite(model: Any) -> None:
    """Refuse to save weights with NaN or inf in them."""
    import torch

    for name, p in model.named_parameters():
        if p.requires_grad and not torch.isfinite(p).all():
            raise TrainingError(f"parameter {name} holds NaN/inf; the model was not saved")
