"""The model worker: a bounded queue in front of one thread that decodes with continuous
batching (`tuneloop.models.decode.Decoder`).

Why this shape: on one machine the model is the bottleneck, so a single thread owns it and
decodes every live request together, one token per step. A request that arrives mid-batch
joins at the next step instead of waiting for the batch to finish; one that finishes, hits
a stop string or whose client hung up leaves at the next step, so abandoned work costs at
most one decoding step. The queue in front is bounded: when it is full, `submit` raises
`QueueFull` (the app answers 429 with `Retry-After`) instead of letting latency grow
without limit. A failure while decoding fails the requests in that batch and nothing else.

Tokens go back to the event loop as events (`Event`), which the app turns into one reply or
a server-sent-event stream; the text of each choice is detokenized as a whole every step and
only its settled part is sent (no trailing whitespace, half a character or the start of a
stop string), so the streamed pieces add up to exactly the non-streamed answer.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tuneloop.errors import TuneloopError

Conversation = list[dict[str, str]]


class QueueFull(TuneloopError):
    """The server is at capacity; retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class Params:
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    n: int = 1


@dataclass
class Event:
    """kind: "delta" (text for choice `index`), "done" (choice `index` finished with
    `finish_reason` after `tokens` tokens), "error" (the request failed: `error`)."""

    kind: str
    index: int = 0
    text: str = ""
    finish_reason: str | None = None
    tokens: int = 0
    error: BaseException | None = None


@dataclass
class Job:
    prompt_ids: list[int]
    params: Params
    emit: Callable[[Event], None]  # called on the worker thread; must be thread-safe
    rerank: tuple[Conversation, Conversation] | None = None  # (as sent, as prepared)
    adapter: str | None = None  # the peft adapter that answers (None: the base model)
    prompting: Any = None  # the answering adapter's prompting (None: the worker's)
    served: str = ""  # the served name that answers (after any traffic split)
    citations: list[dict[str, Any]] = field(default_factory=list)  # retrieved passages
    submitted: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    cancelled: bool = False
    finished: int = 0

    def cancel(self) -> None:
        """Stop decoding this request at the next step (the client went away)."""
        self.cancelled = True


@dataclass
class _Choice:
    job: Job
    index: int
    sent: str = ""
    done: bool = False


class ModelWorker:
    """Owns the model, its tokenizer and its prompting; decodes queued jobs on one thread."""

    def __init__(
        self,
        ref: str,
        max_batch: int = 16,
        max_queue: int = 64,
        prefill_tokens: int = 4096,
        loaded: tuple[Any, Any, Any] | None = None,
    ) -> None:
        from tuneloop.data.prompting import Prompting

        self.ref = ref
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.prefill_tokens = prefill_tokens  # most prompt tokens prefilled in one call
        if loaded is None:
            from tuneloop.models import load

            model, tokenizer, resolved = load(ref)
            loaded = (model, tokenizer, Prompting.of(resolved))
        self.model, self.tokenizer, self.prompting = loaded
        self.model.eval()
        self.context = _context_length(self.model, self.tokenizer)
        # the fast tokenizer's Rust object refuses concurrent calls that set padding or
        # truncation ("Already borrowed"): request threads encode one at a time
        self._tokenizer_lock = threading.Lock()
        self._waiting: collections.deque[Job] = collections.deque()
        self._cv = threading.Condition()
        self._closing = False
        self._control: collections.deque[tuple[Callable[[ModelWorker], Any], Any]] = (
            collections.deque()
        )
        self._active = 0
        self._seconds = 1.0  # running mean of a request's time in the worker
        self._thread: threading.Thread | None = None

    # --- called from the app ------------------------------------------------------------

    def encode_chat(
        self, messages: Conversation, prompting: Any = None
    ) -> tuple[list[int], Conversation, list[Any]]:
        """The request as the model was trained to see it, its prompt tokens, and the
        passages retrieval added (`retrieval.Hit`s; empty without retrieval).
        prompting: an adapter's (default: the worker's model's)."""
        from tuneloop.models.generate import encode_prompt

        prompting = prompting or self.prompting
        (hits,) = prompting.retrieve([messages])
        (prepared,) = prompting.prepare([messages], [hits])
        with self._tokenizer_lock:
            return encode_prompt(self.tokenizer, prepared), prepared, hits

    def encode_text(self, text: str) -> list[int]:
        """A raw completion prompt's tokens (`/v1/completions`: no chat template)."""
        with self._tokenizer_lock:
            return list(self.tokenizer(text)["input_ids"])

    @property
    def depth(self) -> int:
        """Requests waiting for a place in the batch."""
        return len(self._waiting)

    @property
    def active(self) -> int:
        return self._active

    def submit(self, job: Job) -> None:
        """Queue a job, or raise QueueFull when `max_queue` are already waiting."""
        with self._cv:
            if self._closing:
                raise QueueFull("the server is shutting down", retry_after=5)
            if len(self._waiting) >= self.max_queue:
                ahead = len(self._waiting) / max(self.max_batch, 1)
                raise QueueFull(
                    f"the server is at capacity ({len(self._waiting)} requests waiting); retry",
                    retry_after=max(1, min(60, math.ceil(ahead * self._seconds))),
                )
            self._waiting.append(job)
            self._ensure_thread()
            self._cv.notify()

    def call(self, fn: Callable[[ModelWorker], Any]) -> Any:
        """Run `fn(worker)` on the decoding thread once no row is decoding (new rows wait),
        so it may change the model (load or remove an adapter); returns a Future."""
        from concurrent.futures import Future

        future: Future[Any] = Future()
        with self._cv:
            if self._closing:
                raise QueueFull("the server is shutting down", retry_after=5)
            self._control.append((fn, future))
            self._ensure_thread()
            self._cv.notify()
        return future

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="tuneloop-serve", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Fail what is waiting, stop decoding at the next step, join the thread."""
        with self._cv:
            self._closing = True
            waiting = list(self._waiting)
            self._waiting.clear()
            self._cv.notify()
        for job in waiting:
            job.emit(Event("error", error=QueueFull("the server is shutting down", 5)))
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    # --- the decoding thread ------------------------------------------------------------

    def _loop(self) -> None:
        from tuneloop.models.decode import Decoder, Row

        decoder = Decoder(self.model, self.tokenizer.pad_token_id)
        choices: dict[int, _Choice] = {}
        pending: collections.deque[Row] = collections.deque()  # rows of admitted jobs
        next_key = 0
        while True:
            with self._cv:
                if self._closing:
                    for c in choices.values():
                        c.job.emit(
                            Event("error", error=QueueFull("the server is shutting down", 5))
                        )
                    return
                control = self._control[0] if self._control else None
                if control is not None and not decoder.rows and not pending:
                    self._control.popleft()
                if not decoder.rows and not pending and not self._waiting and not control:
                    self._cv.wait(timeout=0.5)
                    continue
                room = self.max_batch - len(decoder) - len(pending)
                taken: list[Job] = []
                while self._waiting and room > 0 and control is None:
                    job = self._waiting.popleft()
                    if not job.cancelled:
                        taken.append(job)
                        room -= 1 if job.rerank else job.params.n
            if control is not None and not decoder.rows and not pending:
                fn, future = control
                try:
                    future.set_result(fn(self))
                except Exception as err:  # reported to the caller; the server keeps serving
                    future.set_exception(err)
                decoder = Decoder(self.model, self.tokenizer.pad_token_id)  # the new model
                continue
            reranks = [j for j in taken if j.rerank is not None]
            if reranks:
                self._answer_reranks(reranks)
            for job in taken:
                if job.rerank is not None:
                    continue
                for i in range(job.params.n):
                    seed = None if job.params.seed is None else job.params.seed + i
                    row = Row(
                        key=next_key,
                        prompt_ids=job.prompt_ids,
                        max_new_tokens=job.params.max_tokens,
                        temperature=job.params.temperature,
                        top_p=job.params.top_p,
                        seed=seed,
                        adapter=job.adapter,
                    )
                    choices[next_key] = _Choice(job, i)
                    pending.append(row)
                    next_key += 1
            self._active = len(decoder) + len(pending)
            try:
                if pending and decoder.can_join():
                    group = [pending.popleft()]
                    budget = self.prefill_tokens - len(group[0].prompt_ids)
                    while pending and len(pending[0].prompt_ids) <= budget:
                        budget -= len(pending[0].prompt_ids)
                        group.append(pending.popleft())
                    group = [r for r in group if not choices[r.key].job.cancelled]
                    decoder.add(group)
                    for row in group:
                        self._after_token(choices[row.key], row)
                elif decoder.rows:
                    decoder.step()
                    for row in decoder.rows:
                        self._after_token(choices[row.key], row)
            except Exception as err:  # those requests fail; the server keeps serving
                failed = {id(c.job): c.job for c in choices.values()}
                for job in failed.values():
                    job.emit(Event("error", error=err))
                decoder = Decoder(self.model, self.tokenizer.pad_token_id)
                choices.clear()
                pending.clear()
                continue
            live = {k for k, c in choices.items() if not c.done and not c.job.cancelled}
            decoder.keep(live)
            for key in [k for k in choices if k not in live]:
                del choices[key]
            pending = collections.deque(r for r in pending if r.key in live)
            self._active = len(decoder) + len(pending)

    def _after_token(self, choice: _Choice, row: Any) -> None:
        """Detokenize the row, send what has settled, finish on end, stop string or budget."""
        job = choice.job
        if job.first_token is None:
            job.first_token = time.perf_counter()
        eos = self.tokenizer.eos_token_id
        ids = row.ids
        finish = None
        if ids[-1] == eos:
            finish, ids = "stop", ids[:-1]
        elif len(ids) >= row.max_new_tokens:
            finish = "length"
        text = self.tokenizer.decode(ids, skip_special_tokens=True).lstrip()
        for stop in job.params.stop:
            at = text.find(stop)
            if at >= 0:
                text, finish = text[:at], "stop"
        settled = text.rstrip() if finish else _settled(text, job.params.stop)
        if settled.startswith(choice.sent) and len(settled) > len(choice.sent):
            job.emit(Event("delta", choice.index, settled[len(choice.sent) :]))
            choice.sent = settled
        if finish:
            choice.done = True
            job.emit(Event("done", choice.index, finish_reason=finish, tokens=len(row.ids)))
            job.finished += 1
            if job.finished == job.params.n:
                seconds = time.perf_counter() - job.submitted
                self._seconds = 0.9 * self._seconds + 0.1 * seconds

    def _answer_reranks(self, jobs: list[Job]) -> None:
        """A run trained with label_rerank answers with its chosen label, as in evaluation
        (one scoring batch per adapter, with that adapter active)."""
        groups: dict[str | None, list[Job]] = {}
        for job in jobs:
            groups.setdefault(job.adapter, []).append(job)
        for adapter, group in groups.items():
            try:
                chosen = self._rerank_group(adapter, group)
            except Exception as err:
                for job in group:
                    job.emit(Event("error", error=err))
                continue
            for job, pick in zip(group, chosen, strict=True):
                with self._tokenizer_lock:
                    ids = self.tokenizer(pick.text, add_special_tokens=False)["input_ids"]
                tokens = len(ids) + 1
                job.first_token = time.perf_counter()
                for i in range(job.params.n):
                    job.emit(Event("delta", i, pick.text))
                    job.emit(Event("done", i, finish_reason="stop", tokens=tokens))

    def _rerank_group(self, adapter: str | None, jobs: list[Job]) -> list[Any]:
        import contextlib

        prompting = jobs[0].prompting or self.prompting
        raw = [j.rerank[0] for j in jobs if j.rerank]
        prompts = [j.rerank[1] for j in jobs if j.rerank]
        scope: Any = contextlib.nullcontext()
        if hasattr(self.model, "peft_config"):
            if adapter is None:
                scope = self.model.disable_adapter()
            else:
                self.model.set_adapter(adapter)
        with self._tokenizer_lock, scope:  # scoring encodes the candidates
            return prompting.reranked(self.model, self.tokenizer, raw, prompts, len(prompts))


def _settled(text: str, stops: list[str]) -> str:
    """The part of a growing answer that later tokens cannot change: no trailing
    whitespace (the final answer is stripped), no trailing replacement character (half of a
    multi-byte character), no suffix that could be the start of a stop string."""
    text = text.rstrip().rstrip("\ufffd")
    hold = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                hold = max(hold, k)
                break
    return text[: len(text) - hold] if hold else text


def _context_length(model: Any, tokenizer: Any) -> int:
    """Tokens the model can attend to: its position limit (the tokenizer's own limit when
    smaller and set)."""
    limit = int(getattr(model.config, "max_position_embeddings", 0) or 0) or 2048
    tok_limit = int(getattr(tokenizer, "model_max_length", 0) or 0)
    if 0 < tok_limit < limit:
        limit = tok_limit
    return limit
