"""tuneloop: fine-tune LLMs on your own data, evaluate them, and keep them good in production.

The public Python API (docs/python.md) is importable from here: `tuneloop.train(...)`,
`tuneloop.evaluate(...)`, `tuneloop.Model.load(...)`. Importing this package is cheap on
purpose (no torch, no transformers): names resolve from `tuneloop.api` on first use, and
heavy libraries load only inside the functions that need them.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from tuneloop.errors import TuneloopError

API = (
    "BUNDLED_MODEL",
    "Curated",
    "DataCard",
    "DatasetInfo",
    "Model",
    "Run",
    "StepCount",
    "SuiteReport",
    "WinRate",
    "compare",
    "compare_approaches",
    "compare_approaches_suite",
    "continual",
    "create_api_key",
    "create_feedback_task",
    "create_studio_user",
    "curate",
    "curation_steps",
    "dataset",
    "dataset_rows",
    "datasets",
    "diff_datasets",
    "eval_examples",
    "evaluate",
    "export",
    "export_feedback",
    "export_traffic",
    "feedback_agreement",
    "feedback_tasks",
    "get_run",
    "home",
    "human_leaderboard",
    "inspect",
    "iterate",
    "judge_agreement",
    "judge_feedback_task",
    "list_api_keys",
    "list_models",
    "load_recipe",
    "monitor",
    "pull_model",
    "quickstart",
    "rag_index",
    "rag_quality",
    "rag_search",
    "recipe_schema",
    "revoke_api_key",
    "rollback",
    "rlaif",
    "run_directory",
    "run_history",
    "run_suite",
    "runs",
    "serve",
    "set_studio_password",
    "studio_users",
    "sweep",
    "synth",
    "synth_batch",
    "synth_batches",
    "synth_candidates",
    "synth_export",
    "synth_review",
    "train",
)
"""The public names, documented in docs/python.md (a test keeps the two in step)."""

__all__ = ["TuneloopError", "__version__", *API]


def __getattr__(name: str) -> Any:
    # lazy: `import tuneloop.registry` (which every layer does) must not pull the API in
    if name in API:
        from tuneloop import api

        return getattr(api, name)
    raise AttributeError(f"module 'tuneloop' has no attribute {name!r}")
