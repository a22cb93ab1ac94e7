"""How a model turns a request into the prompt it was trained on: one object for every caller.

A run records how its training rows became prompts (the run's `prompt_format` and the
recipe's `data.system_prompt`): a system prompt, retrieved passages added to it (a run
trained with `data.retrieval`), label hints appended to the last user message, label
reranking instead of free generation. Evaluation, serving, `tuneloop.Model`
and the alignment rollouts (RLAIF's policy samples) all build a `Prompting` from the
resolved model and call `prepare`, so a run answers a request exactly as its evaluation
report shows.

It lives in `data` (not `models`) because label hints and reranking need the label index,
which is data: `models` sits below `data` in the layers (docs/architecture.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tuneloop.data.formats import Conversation
from tuneloop.data.rerank import LabelRerank


@dataclass
class Prompting:
    """A run's prompt format, loaded (its label index read once)."""

    system_prompt: str | None = None
    hints: Any = None  # tuneloop.data.hints.HintIndex
    hint_k: int = 0
    rerank: LabelRerank | None = None
    labels: list[str] | None = None  # the run's recorded label set
    record: dict[str, Any] = field(default_factory=dict)  # the prompt format as recorded
    retrieval: Any = None  # tuneloop.data.retrieval.RetrievalIndex
    retrieval_k: int = 0

    @classmethod
    def of(cls, resolved: Any, system_prompt: str | None = None) -> Prompting:
        """From a resolved model (`tuneloop.models.resolve`); anything but a run gets a
        plain prompting (only `system_prompt`, when given). system_prompt overrides the
        run's own."""
        fmt = dict(getattr(resolved, "prompt_format", None) or {})
        recipe_data = (getattr(resolved, "recipe", None) or {}).get("data") or {}
        return cls.from_record(
            fmt,
            system_prompt
            or fmt.get("system_prompt")
            or recipe_data.get("system_prompt")
            # every training row opened with this one: a request without it gets it too
            or fmt.get("system_prompt_in_data"),
        )

    @classmethod
    def from_record(cls, fmt: dict[str, Any], system_prompt: str | None = None) -> Prompting:
        """From a recorded prompt format; label indexes are read here, each once."""
        from tuneloop.data.hints import HintIndex

        loaded: dict[str, Any] = {}
        hints_cfg = fmt.get("label_hints")
        out = cls(system_prompt=system_prompt or None, labels=fmt.get("labels"), record=fmt)
        if hints_cfg:
            loaded[hints_cfg["index"]] = HintIndex.load(hints_cfg["index"])
            out.hints, out.hint_k = loaded[hints_cfg["index"]], int(hints_cfg["k"])
        if fmt.get("label_rerank"):
            out.rerank = LabelRerank.from_record(fmt["label_rerank"], loaded)
        if fmt.get("retrieval"):
            from tuneloop.data.retrieval import RetrievalIndex

            out.retrieval = RetrievalIndex.load(fmt["retrieval"]["index"])
            out.retrieval_k = int(fmt["retrieval"]["k"])
        return out

    def with_retrieval(self, index: Any, k: int) -> Prompting:
        """This prompting with passages from `index` (a `RetrievalIndex`) added, k per
        request: RAG on a model that was not trained with it."""
        import dataclasses

        return dataclasses.replace(self, retrieval=index, retrieval_k=int(k))

    def with_system(self, conversations: list[Conversation]) -> list[Conversation]:
        """The system prompt added wherever a conversation has none."""
        if not self.system_prompt:
            return conversations
        from tuneloop.data.readers import with_system_prompt

        return with_system_prompt(conversations, self.system_prompt)

    def with_hints(self, conversations: list[Conversation]) -> list[Conversation]:
        """The run's label hints appended to each last user message (one embedding batch)."""
        if self.hints is None:
            return conversations
        from tuneloop.data.hints import with_hints

        return with_hints(conversations, self.hints, self.hint_k)

    def retrieve(self, conversations: list[Conversation]) -> list[list[Any]]:
        """Each request's passages (`retrieval.Hit`s, best first) for its last user
        message; empty lists when this prompting has no retrieval."""
        if self.retrieval is None:
            return [[] for _ in conversations]
        return self.retrieval.search(self.queries(conversations), self.retrieval_k)

    def with_context(
        self, conversations: list[Conversation], hits: list[list[Any]] | None = None
    ) -> list[Conversation]:
        """The passages (retrieved here unless given) added to each system message."""
        if self.retrieval is None:
            return conversations
        from tuneloop.data.retrieval import with_context

        found = hits if hits is not None else self.retrieve(conversations)
        return with_context(conversations, found)

    def prepare(
        self, conversations: list[Conversation], hits: list[list[Any]] | None = None
    ) -> list[Conversation]:
        """The requests as the model was trained to see them: system prompt, passages,
        then hints. hits: passages already retrieved for them (`retrieve`)."""
        return self.with_hints(self.with_context(self.with_system(conversations), hits))

    def queries(self, conversations: list[Conversation]) -> list[str]:
        """What reranking looks up: each request's own last user message, without hints."""
        from tuneloop.data.hints import query_text

        return [query_text(c) for c in conversations]

    def reranked(
        self,
        model: Any,
        tokenizer: Any,
        raw: list[Conversation],
        prompts: list[Conversation],
        batch_size: int = 16,
        progress: Any = None,
    ) -> list[Any]:
        """The run's answers by label reranking (`tuneloop.data.rerank`): raw are the
        requests as sent (for the lookup), prompts as `prepare` made them."""
        from tuneloop.data.rerank import rerank_answers

        assert self.rerank is not None, "this run does not answer by reranking"
        return rerank_answers(
            model, tokenizer, prompts, self.queries(raw), self.rerank, batch_size, progress
        )

    def answer(
        self,
        model: Any,
        tokenizer: Any,
        conversations: list[Conversation],
        max_new_tokens: int = 128,
        batch_size: int = 16,
    ) -> list[Any]:
        """Greedy answers (`Generation`s) to requests as sent, prompted as the run was
        trained; a reranking run answers with its chosen labels."""
        from tuneloop.models.generate import Generation, generate

        prompts = self.prepare(conversations)
        if self.rerank is None:
            return generate(model, tokenizer, prompts, max_new_tokens, batch_size)[0]
        chosen = self.reranked(model, tokenizer, conversations, prompts, batch_size)
        return [
            Generation(
                text=r.text,
                new_tokens=len(tokenizer(r.text, add_special_tokens=False)["input_ids"]),
                stopped=True,
            )
            for r in chosen
        ]

    def describe(self) -> str:
        """One line for logs and reports."""
        parts = []
        if self.system_prompt:
            parts.append("system prompt")
        if self.hints is not None:
            parts.append(f"label hints (k={self.hint_k})")
        if self.rerank is not None:
            parts.append(f"label rerank of {self.rerank.k}")
        if self.retrieval is not None:
            parts.append(f"retrieval ({self.retrieval_k} of {len(self.retrieval)} passages)")
        return ", ".join(parts) or "as sent"
