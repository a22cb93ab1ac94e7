"""The system of record: datasets, runs, models and eval results, in SQLite or any SQL DB."""

from tuneloop.registry.db import get_engine, head_revision, migrate, session_scope
from tuneloop.registry.records import (
    add_eval,
    add_model,
    add_run_metrics,
    content_hash,
    eval_examples,
    evals_for_run,
    get_dataset,
    get_run,
    link_datasets,
    list_datasets,
    list_runs,
    models_for_run,
    register_dataset,
    run_metrics,
    start_run,
    update_run,
)

__all__ = [
    "add_eval",
    "add_model",
    "add_run_metrics",
    "content_hash",
    "eval_examples",
    "evals_for_run",
    "get_dataset",
    "get_engine",
    "get_run",
    "head_revision",
    "link_datasets",
    "list_datasets",
    "list_runs",
    "migrate",
    "models_for_run",
    "register_dataset",
    "run_metrics",
    "session_scope",
    "start_run",
    "update_run",
]
