"""The curation config: how a raw file is read and which steps turn it into a dataset.

```yaml
input:
  format: auto
  classification_template: "Classify the message. Answer with the label only.\\n\\n{text}"
  labels_file: categories.json      # optional: the valid label set
method: lora                        # for the quantity guideline in the data card
steps:
  - validate: {model: smollm2-135m-instruct, max_length: 512}
  - clean: {}
  - redact_pii: {mode: redact}
  - dedup: {threshold: 0.8}
  - score: {min_answer_words: 1}
  - split: {validation: 0.1, test: 0.1, stratify: label}
```

Steps run in the order listed; each is a registered curation step (`tuneloop data steps`
lists them) and its keys are that step's parameters, checked before anything runs.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tuneloop.data.formats import DEFAULT_CLASSIFICATION_TEMPLATE, FORMATS


class InputConfig(BaseModel):
    """How raw rows are read."""

    model_config = ConfigDict(extra="forbid")

    format: str = Field(default="auto", description="Row format, or auto-detect per row.")
    system_prompt: str | None = Field(
        default=None, description="System message added to conversations that have none."
    )
    classification_template: str = Field(
        default=DEFAULT_CLASSIFICATION_TEMPLATE,
        description="Prompt for text + label rows; `{text}` is replaced by the row's text.",
    )
    text_field: str | None = Field(default=None, description="Classification text column.")
    label_field: str | None = Field(default=None, description="Classification label column.")
    labels_file: str | None = Field(
        default=None,
        description="JSON list (or {label: ...} mapping) of valid labels; relative to the "
        "config file.",
    )

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value != "auto" and value not in FORMATS:
            raise ValueError(f"unknown format {value!r}; known: auto, {', '.join(FORMATS)}")
        return value


class CurateConfig(BaseModel):
    """A curation pipeline: input reading plus an ordered list of steps."""

    model_config = ConfigDict(extra="forbid")

    input: InputConfig = Field(default_factory=InputConfig)
    method: Literal["lora", "qlora", "full", "freeze", "pretrain", "dpo", "kto"] = Field(
        default="lora", description="Intended training method (sets the quantity guideline)."
    )
    steps: list[dict[str, dict[str, Any]]] = Field(
        default_factory=list, description="Ordered steps, each `- name: {params}`."
    )

    @field_validator("steps", mode="before")
    @classmethod
    def _normalise_steps(cls, value: Any) -> Any:
        out = []
        for i, item in enumerate(value or []):
            if isinstance(item, str):
                item = {item: {}}
            if not isinstance(item, dict) or len(item) != 1:
                raise ValueError(f"step {i} must be `- name: {{params}}` or `- name`")
            ((name, params),) = item.items()
            out.append({name: params or {}})
        return out

    def step_list(self) -> list[tuple[str, dict[str, Any]]]:
        return [next(iter(item.items())) for item in self.steps]


def check_steps(config: CurateConfig) -> None:
    """Every step exists and every parameter is one the step accepts (before any work)."""
    import difflib

    from tuneloop.data.pipeline import STEPS
    from tuneloop.errors import DataError

    for i, (name, params) in enumerate(config.step_list()):
        if name not in STEPS:
            close = difflib.get_close_matches(name, list(STEPS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise DataError(f"steps[{i}]: unknown step {name!r}{hint}; known: {', '.join(STEPS)}")
        accepted = [
            p for p in inspect.signature(STEPS[name]).parameters if p not in ("rows", "log")
        ]
        for key in params:
            if key not in accepted:
                close = difflib.get_close_matches(key, accepted, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise DataError(
                    f"steps[{i}] {name}: unknown parameter {key!r}{hint}; accepted: "
                    f"{', '.join(accepted)}"
                )


def read_yaml_mapping(path: Path, what: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping (an empty file is an empty one); DataError
    naming the file when it is missing, not YAML, or not a mapping."""
    import yaml

    from tuneloop.errors import DataError

    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise DataError(f"{path}: invalid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path}: a {what} is a mapping of keys")
    return raw


def load_curate_config(path: str | Path | None) -> tuple[CurateConfig, Path]:
    """Read a curate.yaml (or the defaults when None); returns it and its directory."""
    from pydantic import ValidationError

    from tuneloop.config.load import format_validation_error
    from tuneloop.errors import DataError

    if path is None:
        return default_curate_config(), Path.cwd()
    path = Path(path)
    raw = read_yaml_mapping(path, "curate config")
    try:
        config = CurateConfig.model_validate(raw)
    except ValidationError as err:
        raise DataError(format_validation_error(err, str(path), model=CurateConfig)) from None
    check_steps(config)
    return config, path.resolve().parent


def default_curate_config() -> CurateConfig:
    """Validate, clean, redact PII, deduplicate, score and split 90/10 — a safe default."""
    return CurateConfig(
        steps=[
            {"validate": {}},
            {"clean": {}},
            {"redact_pii": {"mode": "redact"}},
            {"dedup": {}},
            {"preference_checks": {}},
            {"score": {}},
            {"split": {"validation": 0.1, "test": 0.0}},
        ]
    )
