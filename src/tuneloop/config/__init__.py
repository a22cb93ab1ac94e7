"""Typed recipe schema, YAML loading with overrides, and where tuneloop keeps its state."""

from tuneloop.config.home import db_url, models_dir, runs_dir, tuneloop_home
from tuneloop.config.load import dump_recipe, load_recipe, recipe_from_dict, schema_markdown
from tuneloop.config.recipe import (
    DEFAULT_MODEL,
    AdapterConfig,
    DataConfig,
    EvalConfig,
    Recipe,
    TrainingConfig,
)

__all__ = [
    "DEFAULT_MODEL",
    "AdapterConfig",
    "DataConfig",
    "EvalConfig",
    "Recipe",
    "TrainingConfig",
    "db_url",
    "dump_recipe",
    "load_recipe",
    "models_dir",
    "recipe_from_dict",
    "runs_dir",
    "schema_markdown",
    "tuneloop_home",
]
