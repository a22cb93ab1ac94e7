"""The recipe: one typed YAML file that describes a run, end to end.

Every field has a default that works on a 2-core CPU with the bundled model and a
description that becomes `tuneloop recipe schema` and docs/recipes.md. Unknown keys are
rejected (`extra="forbid"`) so a typo never silently falls back to a default.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_MODEL = "smollm2-135m-instruct"
_COMMIT = re.compile(r"[0-9a-f]{40}")
METRICS = ("exact_match", "rouge_l", "bleu", "perplexity")
Metric = Literal[
    "exact_match",
    "token_f1",
    "rouge_1",
    "rouge_2",
    "rouge_l",
    "rouge_lsum",
    "bleu",
    "meteor",
    "json_valid",
    "perplexity",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RetrievalConfig(_Section):
    """Retrieval in the prompts (fine-tuned + RAG): passages from documents added to every
    training and evaluation prompt, and to every request when the run is served."""

    docs: str = Field(
        description="A folder of documents (.txt, .md, .html, .pdf) or one document. "
        "In a recipe file a relative path is relative to the recipe."
    )
    k: int = Field(
        default=3, gt=0, le=20, description="Passages per prompt, the most similar first."
    )
    max_chars: int = Field(
        default=700,
        ge=100,
        description="Longest chunk, in characters (cut at paragraph, "
        "sentence, then word boundaries; a chunk never spans two headings).",
    )
    overlap: int = Field(
        default=100, ge=0, description="Characters of the previous chunk that start the next."
    )

    @model_validator(mode="after")
    def _overlap_fits(self) -> RetrievalConfig:
        if self.overlap >= self.max_chars:
            raise ValueError("data.retrieval.overlap must be smaller than max_chars")
        return self


class DataConfig(_Section):
    """Where the training and evaluation data come from and how rows become prompts."""

    train: str = Field(
        description="Training data: a file (JSONL, JSON, CSV, Parquet; chat `messages`, "
        "prompt/response, Alpaca, ShareGPT or text + label classification rows), a folder of "
        ".txt/.md/.html documents for `pretrain`, or a stored dataset version `dataset:ID`. "
        "Relative paths in a recipe file are relative to the recipe."
    )
    eval: str | None = Field(
        default=None,
        description="Validation data, same forms as `train`: validation loss during training, "
        "early stopping, the best checkpoint, and generation metrics.",
    )
    validation_split: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="Without `eval`, hold out this fraction of `train` for validation "
        "(stratified by label for classification data, seeded by `training.seed`).",
    )
    limit_per_label: int | None = Field(
        default=None,
        gt=0,
        description="Classification: train on at most N rows per label (a seeded random "
        "choice, after the validation split), e.g. 10 to see how a few examples per class do.",
    )
    fraction: float = Field(
        default=1.0,
        gt=0.0,
        le=1.0,
        description="Train on this fraction of the training rows (a seeded choice, stratified "
        "by label; after the validation split), for data-volume sweeps.",
    )
    format: Literal[
        "auto", "messages", "prompt_response", "alpaca", "sharegpt", "classification", "text"
    ] = Field(
        default="auto",
        description="Row format; `auto` detects it from each row's keys. `classification` "
        "turns text + label rows into a chat pair through `template`; `text` is raw "
        "documents for `pretrain`.",
    )
    system_prompt: str | None = Field(
        default=None,
        description="System message added to every conversation that has none of its own.",
    )
    template: str | None = Field(
        default=None,
        description="Classification rows: the user message, with `{text}` where the row's text "
        "goes (default: a short instruction to answer with the label only).",
    )
    text_field: str | None = Field(
        default=None,
        description="Classification rows: the column holding the text (default: the first of "
        "text, sentence, utterance, content).",
    )
    label_field: str | None = Field(
        default=None,
        description="Classification rows: the column holding the label (default: the first of "
        "label, category, intent, class).",
    )
    labels: list[str] | str | None = Field(
        default=None,
        description="Classification: the label set, as a list or a JSON file of strings. Rows "
        "with other labels are an error; evaluation reports accuracy over this set.",
    )
    max_length: int = Field(
        default=512,
        gt=0,
        description="Maximum tokens per training example (prompt + answer) after the chat "
        "template; longer rows are cut from the end, and rows whose answer would be cut off "
        "entirely are dropped (counted in the run log), never trained on with no loss. For "
        "`pretrain`, the length of each packed block.",
    )
    label_hints: int = Field(
        default=0,
        ge=0,
        description="Labelled data: end each prompt with the K labels whose training rows are "
        "nearest by sentence embedding (bundled all-MiniLM-L6-v2), best first, as "
        "'Likely labels: a, b, c'. Training rows get them leave-one-out; the index is kept "
        "in the run so evaluation adds the same hints. Helps most with few rows per class; "
        "0 turns it off.",
    )
    hint_tune_steps: int = Field(
        default=0,
        ge=0,
        description="With `label_hints` or `label_rerank`: first tune a copy of the "
        "embedder for this many "
        "steps (supervised contrastive loss, batches of 32 labels x 4 rows) so rows of one "
        "label embed together; the tuned copy is kept with the run's hint index. 0 uses the "
        "bundled embedder as it is.",
    )
    label_rerank: int = Field(
        default=0,
        ge=0,
        description="Labelled data: at inference, answer with one of the K labels whose "
        "training rows are nearest by sentence embedding, chosen by the model's "
        "log-likelihood of each plus `rerank_weight` times the lookup's log-probability "
        "(evaluation and serving of the run do this with no flags). Every answer is a "
        "label; helps most where the model alone confuses neighbouring classes. 0 turns "
        "it off (free greedy generation).",
    )
    rerank_weight: float = Field(
        default=2.0,
        ge=0,
        description="With `label_rerank`: weight of the lookup's log-probability against "
        "the model's (0 = the model alone, among the candidates; 1 = a plain product of "
        "the two). 2 was best on Banking77 validation with 10 rows per intent and with "
        "all rows (docs/experiments.md).",
    )
    retrieval: RetrievalConfig | None = Field(
        default=None,
        description="Fine-tune with retrieval: each prompt's system message gets the "
        "`k` passages of `docs` most similar to its last user message (bundled MiniLM, "
        "FAISS), numbered for citation. The index is kept in the run, so `tuneloop eval` "
        "and `tuneloop serve` add the same passages (docs/baselines.md). Raise "
        "`max_length` to fit them (about 200 tokens per 700-character passage).",
    )
    train_on: Literal["all_assistant", "last_assistant"] = Field(
        default="all_assistant",
        description="Which assistant turns carry the loss: every assistant turn of a "
        "multi-turn conversation, or only the last. Prompt, system and user tokens never do.",
    )

    @model_validator(mode="after")
    def _hint_tuning_needs_hints(self) -> DataConfig:
        if self.hint_tune_steps and not (self.label_hints or self.label_rerank):
            raise ValueError(
                "data.hint_tune_steps tunes the label-index embedder: set data.label_hints "
                "or data.label_rerank too"
            )
        return self


class AdapterConfig(_Section):
    """Which weights are trained."""

    type: Literal["lora", "qlora", "full", "freeze"] = Field(
        default="lora",
        description="`lora` trains low-rank adapters (small, fast, the base stays frozen); "
        "`qlora` does the same on a 4-bit NF4 base (bitsandbytes, CUDA GPU only); `full` "
        "trains every weight; `freeze` trains only the top `train_top_layers` blocks and/or "
        "the modules named in `train_modules`.",
    )
    r: int = Field(default=32, gt=0, description="LoRA rank.")
    alpha: int = Field(default=64, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="Dropout on the LoRA path. Off by default: on CPU it costs about a fifth "
        "of the training step (measured in docs/experiments.md); raise it for small, noisy "
        "data.",
    )
    target_modules: str | list[str] = Field(
        default="all-linear",
        description="Modules that get adapters: `all-linear` or a list of module names "
        "such as [q_proj, v_proj].",
    )
    rslora: bool = Field(
        default=False,
        description="Rank-stabilised LoRA: scale by alpha / sqrt(r) instead of alpha / r, so "
        "high ranks keep learning.",
    )
    dora: bool = Field(
        default=False,
        description="DoRA: learn a magnitude per output and a LoRA direction (slower, "
        "sometimes better at low rank).",
    )
    train_top_layers: int | None = Field(
        default=None,
        ge=0,
        description="`freeze`: train the top N transformer blocks (and the final norm).",
    )
    train_modules: list[str] = Field(
        default_factory=list,
        description="`freeze`: also train parameters whose name contains one of these "
        "strings (e.g. lm_head, embed_tokens). Every entry must match something.",
    )

    @model_validator(mode="after")
    def _freeze_needs_something(self) -> AdapterConfig:
        if self.type == "freeze" and not self.train_top_layers and not self.train_modules:
            raise ValueError(
                "adapter.type freeze trains nothing: set adapter.train_top_layers and/or "
                "adapter.train_modules"
            )
        if self.dora and self.type not in ("lora", "qlora"):
            raise ValueError("adapter.dora applies to lora and qlora only")
        return self


class ReplayConfig(_Section):
    """Replay against forgetting: general examples mixed into the training rows."""

    ratio: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="Share of the training rows that are replay rows (0: off). 0.2 adds one "
        "replay row for every four task rows.",
    )
    source: str = Field(
        default="self",
        description="`self`: self-distilled, the base model's own answers to `prompts` "
        "(generated once, cached per base model, a dataset version); or a chat / "
        "prompt-response file of general examples to mix in as they are.",
    )
    prompts: str = Field(
        default="builtin:replay",
        description="For `self`: the prompts to answer; `builtin:replay` is tuneloop's "
        "general set (disjoint from the forgetting probes), or a file of prompt rows.",
    )
    max_new_tokens: int = Field(
        default=96, gt=0, description="For `self`: the longest base answer generated."
    )


class TrainingConfig(_Section):
    """Optimisation hyperparameters."""

    epochs: float = Field(
        default=3.0,
        gt=0,
        description="Passes over the training data (3, as in transformers and TRL; small "
        "classification sets of ~10 rows per class do better with 5).",
    )
    max_steps: int = Field(
        default=-1, description="Stop after this many optimizer steps; -1 means use `epochs`."
    )
    learning_rate: float | None = Field(
        default=None,
        gt=0,
        description="Peak learning rate. Unset: chosen by adapter and model size (LoRA "
        "family: 1e-3 below 1B parameters, 2e-4 above; full/freeze: 1e-4 below 1B, 2e-5 "
        "above); run.json records the value used.",
    )
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
        description=(
            "`auto` uses bf16 autocast on a GPU that supports it and on a CPU with native "
            "bf16 units (AVX512-BF16 or AMX), else fp32. Trainable weights and optimizer "
            "state stay fp32 either way."
        ),
    )
    distributed: Literal["ddp", "fsdp", "zero1", "zero2", "zero3"] = Field(
        default="ddp",
        description=(
            "With --nproc N: `ddp` replicates the model in every process; `fsdp` shards "
            "weights, gradients and optimizer state over the processes (PyTorch FSDP2, one "
            "unit per transformer block), for models too big to replicate; `zero1`, `zero2`, "
            "`zero3` use DeepSpeed ZeRO (needs `pip install deepspeed`) to shard the "
            "optimizer state, + gradients, + weights."
        ),
    )
    attention: Literal["auto", "eager", "sdpa"] = Field(
        default="auto",
        description=(
            "Attention kernel while training. `auto`: on a CPU, `eager` (plain matmul + "
            "softmax) when the longest training sequence is at most 512 tokens, else `sdpa`; "
            "on a GPU, `sdpa`. PyTorch's CPU flash-attention backward is slow on short "
            "sequences: eager trains short chats ~35% faster (docs/performance.md)."
        ),
    )
    packing: bool = Field(
        default=False,
        description=(
            "Pack training examples end to end into rows of `data.max_length` tokens "
            "(best-fit decreasing, ~99% of each row is tokens) instead of padding; "
            "`batch_size` then counts rows. Position ids restart per example, so no token "
            "attends across examples and the loss equals the unpacked one. Pays on a GPU; "
            "on a CPU short chats train faster unpacked (longer rows cost more attention; "
            "docs/performance.md)."
        ),
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
    eval_steps: int | None = Field(
        default=None,
        gt=0,
        description="Measure validation loss every N optimizer steps (default: at the end of "
        "every epoch); the last step is always measured. Needs `data.eval` or "
        "`data.validation_split`.",
    )
    save_steps: int | None = Field(
        default=None,
        gt=0,
        description="Write a checkpoint every N steps (default: at every validation, else "
        "every epoch). Checkpoints are written atomically.",
    )
    save_total_limit: int = Field(
        default=2,
        gt=0,
        description="Keep the last N checkpoints (plus the best by validation loss).",
    )
    early_stopping_patience: int | None = Field(
        default=None,
        gt=0,
        description="Stop after this many validations without improving the best validation "
        "loss by more than `early_stopping_min_delta` (None: never stop early).",
    )
    early_stopping_min_delta: float = Field(
        default=0.0, ge=0.0, description="Smallest validation-loss drop that counts as better."
    )
    load_best_at_end: bool = Field(
        default=True,
        description="With validation data, the saved model is the checkpoint with the lowest "
        "validation loss, not the last one.",
    )
    seed: int = Field(default=0, description="Seed for data order, dropout and initialisation.")
    l2_to_base: float = Field(
        default=0.0,
        ge=0.0,
        description="Against forgetting: add this weight times the squared distance of the "
        "trained weights from the starting model to the loss (LoRA: the adapter's weight "
        "delta; full fine-tuning keeps a copy of the starting weights). 0: off.",
    )
    ewc: float = Field(
        default=0.0,
        ge=0.0,
        description="Against forgetting: elastic weight consolidation, the same squared "
        "distance weighted per weight by the starting model's diagonal Fisher on general "
        "text (scaled to mean 1, so weights compare with l2_to_base). Method sft. 0: off.",
    )
    ewc_samples: int = Field(
        default=64,
        gt=0,
        description="General examples (from the built-in replay prompts) the Fisher is "
        "computed on, once per starting model; cached.",
    )
    replay: ReplayConfig = Field(
        default_factory=ReplayConfig,
        description="Mix general examples into training so the model keeps what it knew "
        '(docs/training.md, "Keep what the model knew").',
    )
    logging_steps: int = Field(default=5, gt=0, description="Log metrics every N steps.")
    report_to: list[str] = Field(
        default_factory=list,
        description="Extra trackers, through accelerate (tensorboard, mlflow, wandb, ...; "
        "the tracker's package must be installed). tuneloop's own registry and "
        "`metrics.jsonl` record every run without them.",
    )


DEFAULT_JUDGE_CRITERIA = "helpfulness, correctness and clarity"  # the judge prompt's default


class AlignmentConfig(_Section):
    """Preference methods: `reward`, `judge`, `dpo`, `simpo`, `orpo` and `kto`
    (docs/alignment.md)."""

    beta: float = Field(
        default=0.1,
        gt=0,
        description="`dpo`/`kto`: strength of the pull toward the reference model (the KL "
        "coefficient; 0.1 as in the DPO paper and TRL). `simpo`: the reward scale (try 2.0). "
        "`orpo`: the weight of the odds-ratio term beside the SFT loss.",
    )
    loss: Literal["sigmoid", "ipo", "hinge", "robust"] = Field(
        default="sigmoid",
        description="`dpo` loss: `sigmoid` (the DPO paper), `ipo` (squared, on "
        "length-averaged log-probabilities), `hinge` (SLiC), `robust` (for noisy labels, "
        "with `label_smoothing` as the assumed flip rate).",
    )
    label_smoothing: float = Field(
        default=0.0,
        ge=0.0,
        lt=0.5,
        description="`dpo` sigmoid/robust and `simpo`: the assumed fraction of flipped "
        "preference labels (conservative DPO).",
    )
    gamma_beta_ratio: float = Field(
        default=0.5,
        ge=0.0,
        description="`simpo`: the target reward margin, as a fraction of `beta`.",
    )
    margin: float = Field(
        default=0.0,
        ge=0.0,
        description="`reward`: the Bradley-Terry margin: the chosen answer must out-score "
        "the rejected one by this much before the loss stops pushing.",
    )
    judge_criteria: str = Field(
        default=DEFAULT_JUDGE_CRITERIA,
        min_length=1,
        description="`judge`: what the judge is asked to compare answers for (the words of "
        "its prompt, e.g. `harmlessness`); give `tuneloop judge agreement --criteria` and "
        "`compare` the same words (a tuned run's own criteria are used when not given).",
    )
    desirable_weight: float = Field(
        default=1.0, gt=0, description="`kto`: loss weight of desirable examples."
    )
    undesirable_weight: float = Field(
        default=1.0, gt=0, description="`kto`: loss weight of undesirable examples."
    )
    pairs_to_unpaired: bool = Field(
        default=False,
        description="`kto` on paired data: turn each pair into a desirable (chosen) and an "
        "undesirable (rejected) example. Off by default, so paired data given to `kto` is "
        "an error rather than a silent conversion.",
    )


class RewardSpec(_Section):
    """One reward term of `rl.rewards`: a reward model or a Python function, with a weight."""

    model: str | None = Field(
        default=None,
        description="A reward model: `run:ID` of a `method: reward` run, or its model folder. "
        "It scores the prompt plus the sampled answer.",
    )
    function: str | None = Field(
        default=None,
        description="A Python reward function `path/to/file.py:name`, called as "
        "`name(prompt_messages, answer_text) -> float`. The file is loaded and the function "
        "checked when the run starts. In a recipe file a relative path is relative to the recipe.",
    )
    weight: float = Field(
        default=1.0, description="Multiplier of this term; the reward is the weighted sum."
    )

    @model_validator(mode="after")
    def _one_source(self) -> RewardSpec:
        if (self.model is None) == (self.function is None):
            raise ValueError("each rl.rewards entry needs exactly one of `model` or `function`")
        return self


class RLAIFConfig(_Section):
    """`tuneloop rlaif RECIPE`: preference pairs from the policy's own answers, labelled by
    a judge, then the recipe's preference method on them (docs/alignment.md)."""

    judge: str | None = Field(
        default=None,
        description="Who labels: a model asked pairwise in both orders (a bundled name, a "
        "folder, `run:ID` of a `method: judge` run, or `openai:MODEL`), or `run:ID` of a "
        "`method: reward` run (the higher score wins). Required.",
    )
    samples_per_prompt: int = Field(
        default=4,
        ge=2,
        le=16,
        description="Answers sampled per prompt. Every two distinct answers are compared, "
        "so an LLM judge makes k(k-1) calls per prompt (both orders).",
    )
    max_new_tokens: int = Field(default=128, gt=0, description="Length budget of an answer.")
    temperature: float = Field(
        default=1.0, gt=0, description="Sampling temperature (diverse answers to compare)."
    )
    top_p: float = Field(default=1.0, gt=0, le=1.0, description="Nucleus sampling.")
    criteria: str | None = Field(
        default=None,
        description="What an LLM judge compares for (default: a tuned judge's own criteria, "
        "else helpfulness, correctness and clarity).",
    )
    heldout: float = Field(
        default=0.1,
        ge=0.0,
        lt=1.0,
        description="Share of the prompts held out (seed `training.seed`): never sampled for "
        "pairs, answered by the old and new policy for the judge's win rate.",
    )
    max_prompts: int | None = Field(
        default=None, gt=0, description="Use only the first N training prompts."
    )


class RLConfig(_Section):
    """Reinforcement learning from rewards: `ppo`, `grpo` and `rloo` (docs/alignment.md)."""

    rewards: list[RewardSpec] = Field(
        default_factory=list,
        description="What the policy maximises: reward models (`model: run:ID`) and/or "
        "Python functions (`function: file.py:name`), each with a `weight`; the reward of an "
        "answer is the weighted sum. Required for `ppo`, `grpo` and `rloo`.",
    )
    samples_per_prompt: int | None = Field(
        default=None,
        gt=0,
        description="Answers sampled per prompt in each rollout. Default 1 for `ppo` (each "
        "answer is its own episode) and 4 for `grpo`/`rloo`, whose baseline is the other "
        "answers to the same prompt (at least 2).",
    )
    max_new_tokens: int = Field(
        default=64, gt=0, description="Length budget of a sampled answer, in tokens."
    )
    temperature: float = Field(
        default=1.0,
        gt=0,
        description="Sampling temperature of the rollouts. 1.0 samples the policy itself, "
        "which the policy-gradient estimate assumes.",
    )
    top_p: float = Field(default=1.0, gt=0, le=1.0, description="Nucleus sampling of rollouts.")
    kl_coef: float = Field(
        default=0.05,
        gt=0,
        description="β: the pull toward the reference (the model with the adapter "
        "disabled). `ppo`: the per-token penalty β·(log π − log π_ref) in the reward (the "
        "initial β with `kl_controller: adaptive`); `grpo`/`rloo`: the weight of the k3 KL "
        "term in the loss.",
    )
    kl_controller: Literal["fixed", "adaptive"] = Field(
        default="fixed",
        description="`fixed` keeps β; `adaptive` steers the measured KL toward `kl_target` "
        "(Ziegler et al. 2019). Its β is saved in every checkpoint.",
    )
    kl_target: float = Field(
        default=6.0,
        gt=0,
        description="`adaptive`: the KL (nats per answer, summed over its tokens) to steer "
        "toward (6 as in Ziegler et al.).",
    )
    kl_horizon: float = Field(
        default=10000.0,
        gt=0,
        description="`adaptive`: how many answers it takes β to move by at most 20%.",
    )
    gamma: float = Field(
        default=1.0, gt=0, le=1.0, description="`ppo`: discount of GAE (1: no discount)."
    )
    lam: float = Field(
        default=0.95, ge=0, le=1.0, description="`ppo`: GAE λ (bias-variance trade-off)."
    )
    clip: float = Field(
        default=0.2, gt=0, description="ε of the clipped surrogate: the ratio π/π_old range."
    )
    value_clip: float = Field(
        default=0.2,
        gt=0,
        description="`ppo`: how far (in reward units) one update may move the value "
        "prediction from its rollout-time value.",
    )
    value_coef: float = Field(
        default=0.1, gt=0, description="`ppo`: weight of the value loss beside the policy loss."
    )
    ppo_epochs: int = Field(
        default=2,
        gt=0,
        description="Passes over each rollout batch (each a fresh shuffle into `minibatches`).",
    )
    minibatches: int = Field(
        default=2,
        gt=0,
        description="Optimizer steps per pass: the rollout batch is split into this many.",
    )
    scale_advantages: bool | None = Field(
        default=None,
        description="`grpo`/`rloo`: divide each group's advantages by its reward std. None "
        "follows each paper (GRPO scales, RLOO does not); false with `grpo` is Dr. GRPO.",
    )
    generation_batch_size: int = Field(
        default=16, gt=0, description="Prompts generated together in a rollout."
    )


class ModelLoadingConfig(_Section):
    """How the `model`'s files may be loaded. Both opt-ins run code or data from the model's
    source with your permissions, so they are off unless you trust that source."""

    allow_pickle_weights: bool = Field(
        default=False,
        description="Load weights stored as Python pickles (`pytorch_model.bin`, "
        "`adapter_model.bin`) when the model has no safetensors. Off: a pickle can carry "
        "code that runs when it is loaded, so only safetensors are read; turn on only for a "
        "source you trust (or convert the model to safetensors once).",
    )
    trust_remote_code: bool = Field(
        default=False,
        description="Run the Python code a hub model ships for a custom architecture or "
        "tokenizer. Off: that code would run with your permissions. Needs `revision` pinned "
        "to a commit, so the code you reviewed is the code that runs.",
    )
    revision: str | None = Field(
        default=None,
        description="The hub commit to load (40 hex characters; a branch or tag also works "
        "without `trust_remote_code`). Required with `trust_remote_code`: a later push to "
        "the repository must not change the code that runs.",
    )

    @model_validator(mode="after")
    def _pinned_code(self) -> ModelLoadingConfig:
        if self.trust_remote_code and not _COMMIT.fullmatch(self.revision or ""):
            raise ValueError(
                "model_loading.trust_remote_code needs model_loading.revision pinned to a "
                "commit (40 hex characters), so a later push cannot change the code that runs"
            )
        return self


class EvalConfig(_Section):
    """How models are evaluated on `data.eval`."""

    metrics: list[Metric] = Field(
        default_factory=lambda: list(METRICS),
        description="Metrics to compute: exact_match, token_f1, rouge_1, rouge_2, rouge_l, "
        "rouge_lsum, bleu, meteor, json_valid, perplexity (docs/evaluation.md).",
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
    model_loading: ModelLoadingConfig = Field(
        default_factory=ModelLoadingConfig,
        description="How the model's files may be loaded (safetensors only, no shipped code, "
        "unless opted in).",
    )
    method: Literal[
        "sft", "pretrain", "reward", "judge", "dpo", "simpo", "orpo", "kto", "ppo", "grpo", "rloo"
    ] = Field(
        default="sft",
        description="`sft`: supervised fine-tuning on conversations, loss on assistant turns. "
        "`pretrain`: continued pretraining on raw documents packed into `data.max_length` "
        "blocks, loss on every token. `reward`: a reward model (a scalar score) from "
        "preference pairs. `judge`: a pairwise judge (verdict A or B) from preference "
        "pairs, for `compare --judge` and RLAIF. `dpo`, `simpo`, `orpo`: preference tuning "
        "from pairs; `kto`: from answers marked desirable or not. `ppo`, `grpo`, `rloo`: "
        "reinforcement learning from the rewards in `rl` (docs/alignment.md).",
    )
    data: DataConfig = Field(description="Training and evaluation data.")
    adapter: AdapterConfig = Field(default_factory=AdapterConfig, description="Adapter.")
    training: TrainingConfig = Field(
        default_factory=TrainingConfig, description="Optimisation hyperparameters."
    )
    alignment: AlignmentConfig = Field(
        default_factory=AlignmentConfig,
        description="Preference methods' settings (`reward`, `dpo`, `simpo`, `orpo`, `kto`).",
    )
    rl: RLConfig = Field(
        default_factory=RLConfig,
        description="Reinforcement learning settings (`ppo`, `grpo`, `rloo`): rewards, "
        "rollouts, the KL leash and the PPO update.",
    )
    rlaif: RLAIFConfig = Field(
        default_factory=RLAIFConfig,
        description="`tuneloop rlaif`: judge-labelled pairs from the policy's own answers.",
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
        if self.method in ("ppo", "grpo", "rloo"):
            if not self.rl.rewards:
                raise ValueError(
                    f"method {self.method} needs a reward: add rl.rewards with a reward model "
                    "(model: run:ID) or a Python function (function: path/to/file.py:name)"
                )
            if self.method != "ppo" and (self.rl.samples_per_prompt or 4) < 2:
                raise ValueError(
                    f"method {self.method} compares answers to the same prompt: "
                    "rl.samples_per_prompt must be at least 2"
                )
        return self
