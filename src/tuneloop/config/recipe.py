"""The recipe: one typed YAML file that describes a run, end to end.

Every field has a default that works on a 2-core CPU with the bundled model and a
description that becomes `tuneloop recipe schema` and docs/recipes.md. Unknown keys are
rejected (`extra="forbid"`) so a typo never silently falls back to a default.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_MODEL = "smollm2-135m-instruct"
METRICS = ("exact_match", "rouge_l", "bleu", "perplexity")
Metric = Literal["exact_match", "rouge_l", "bleu", "perplexity"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    """Where the training and evaluation data come from and how rows become prompts."""

    train: str = Field(
        description="Training data file (JSONL, JSON or CSV; chat `messages`, prompt/response, "
        "Alpaca or ShareGPT rows). Relative paths in a recipe file are relative to the recipe."
    )
    eval: str | None = Field(
        default=None,
        description="Evaluation data file, same formats as `train`. Used for validation loss "
        "and generation metrics.",
    )
    format: Literal["auto", "messages", "prompt_response", "alpaca", "sharegpt"] = Field(
        default="auto", description="Row format; `auto` detects it from the keys of each row."
    )
    system_prompt: str | None = Field(
        default=None,
        description="System message added to every conversation that has none of its own.",
    )
    max_length: int = Field(
        default=512,
        gt=0,
        description="Maximum tokens per training example (prompt + answer) after the chat "
        "template; longer rows are truncated from the end.",
    )


class AdapterConfig(_Section):
    """Which weights are trained."""

    type: Literal["lora", "full"] = Field(
        default="lora",
        description="`lora` trains low-rank adapters (small, fast, the base stays frozen); "
        "`full` trains every weight.",
    )
    r: int = Field(default=16, gt=0, description="LoRA rank.")
    alpha: int = Field(default=32, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA path.")
    target_modules: str | list[str] = Field(
        default="all-linear",
        description="Modules that get adapters: `all-linear` or a list of module names "
        "such as [q_proj, v_proj].",
    )


class TrainingConfig(_Section):
    """Optimisation hyperparameters."""

    epochs: float = Field(default=1.0, gt=0, description="Passes over the training data.")
    max_steps: int = Field(
        default=-1, description="Stop after this many optimizer steps; -1 means use `epochs`."
    )
    learning_rate: float = Field(default=2e-4, gt=0, description="Peak learning rate.")
    batch_size: int = Field(default=8, gt=0, description="Examples per device per forward pass.")
    gradient_accumulation_steps: int = Field(
        default=1, gt=0, description="Forward passes per optimizer step."
    )
    warmup_ratio: float = Field(
        default=0.05, ge=0.0, lt=1.0, description="Fraction of steps spent warming up the LR."
    )
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        default="cosine", description="Learning-rate schedule after warm-up."
    )
    weight_decay: float = Field(default=0.0, ge=0.0, description="AdamW weight decay.")
    max_grad_norm: float = Field(
        default=1.0, gt=0, description="Gradient clipping threshold (global L2 norm)."
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto",
        description="`auto` uses bf16 on a GPU that supports it and fp32 on CPU.",
    )
    gradient_checkpointing: bool = Field(
        default=False,
        description="Recompute activations in the backward pass: less memory, ~30% slower.",
    )
    group_by_length: bool = Field(
        default=True,
        description="Batch examples of similar length together (shuffled megabatches sorted "
        "by length): about 25% less padding on mixed-length chat data.",
    )
    seed: int = Field(default=0, description="Seed for data order, dropout and initialisation.")
    logging_steps: int = Field(default=5, gt=0, description="Log metrics every N steps.")
    report_to: list[str] = Field(
        default_factory=list,
        description="Extra trackers passed through to transformers (tensorboard, mlflow, "
        "wandb). tuneloop's own registry records every run without them.",
    )


class EvalConfig(_Section):
    """How models are evaluated on `data.eval`."""

    metrics: list[Metric] = Field(
        default_factory=lambda: list(METRICS),
        description="Metrics to compute: exact_match, rouge_l, bleu, perplexity.",
    )
    max_new_tokens: int = Field(
        default=128, gt=0, description="Generation budget per answer (greedy decoding)."
    )
    batch_size: int = Field(default=16, gt=0, description="Prompts generated together.")
    limit: int | None = Field(
        default=None, gt=0, description="Evaluate only the first N examples (None: all)."
    )


class Recipe(_Section):
    """A complete description of one fine-tuning run."""

    name: str = Field(default="run", min_length=1, description="Short name for the run.")
    model: str = Field(
        default=DEFAULT_MODEL,
        description="Model reference: a bundled name (`smollm2-135m-instruct`), a local "
        "model directory, a run id (`run:12`) or a Hugging Face hub id.",
    )
    method: Literal["sft"] = Field(default="sft", description="Training method.")
    data: DataConfig = Field(description="Training and evaluation data.")
    adapter: AdapterConfig = Field(default_factory=AdapterConfig, description="Adapter.")
    training: TrainingConfig = Field(
        default_factory=TrainingConfig, description="Optimisation hyperparameters."
    )
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation settings.")
    output_dir: str | None = Field(
        default=None,
        description="Parent directory for run directories (default: $TUNELOOP_HOME/runs).",
    )

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> Recipe:
        if self.training.max_steps == 0 or self.training.max_steps < -1:
            raise ValueError("training.max_steps must be -1 (use epochs) or a positive number")
        return self
