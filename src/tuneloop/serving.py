"""An OpenAI-compatible endpoint for any model tuneloop can load (`tuneloop serve MODEL`).

`POST /v1/chat/completions`, `GET /v1/models` and `GET /health`, enough for the OpenAI
client libraries, `tuneloop eval --model openai:NAME` and judges. Requests are queued and a
single worker thread answers them in micro-batches (whatever is waiting, up to `max_batch`,
with the same token budget), through the same batched greedy generation as `tuneloop eval`,
so an answer served here is the answer the eval report shows.

A run is served as it was trained: a request without a system message gets the run's
system prompt, and a run trained with label hints gets the same hints appended to its last
user message; a run trained with label reranking answers with its best candidate label,
as its evaluation does. Greedy decoding only for now: a request asking for sampling
(`temperature` > 0), several choices (`n` > 1) or streaming gets a 400 that says so, never
a silently different answer.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tuneloop.errors import TuneloopError


@dataclass
class _Job:
    messages: list[dict[str, str]]
    max_tokens: int
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    queued: float = field(default_factory=time.perf_counter)


class ModelWorker:
    """Owns the model; answers queued requests in micro-batches on one thread."""

    def __init__(self, ref: str, max_batch: int = 16) -> None:
        from tuneloop.models import load

        self.ref = ref
        self.max_batch = max_batch
        self.model, self.tokenizer, resolved = load(ref)
        fmt = resolved.prompt_format or {}
        recipe_data = (resolved.recipe or {}).get("data", {})
        self.system_prompt = fmt.get("system_prompt") or recipe_data.get("system_prompt")
        self.hints = None
        hints_cfg = fmt.get("label_hints")
        if hints_cfg:
            from tuneloop.data.hints import HintIndex

            self.hints = (HintIndex.load(hints_cfg["index"]), int(hints_cfg["k"]))
        self.rerank = None
        rerank_cfg = fmt.get("label_rerank")
        if rerank_cfg:
            from tuneloop.evaluation.rerank import LabelRerank

            loaded = {hints_cfg["index"]: self.hints[0]} if self.hints else None
            self.rerank = LabelRerank.from_record(rerank_cfg, loaded)
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None  # started by the first queued request

    def prepare(self, conversations: list[list[dict[str, str]]]) -> list[list[dict[str, str]]]:
        """The requests as the model was trained to see them (system prompt, label hints);
        one embedding batch for all of them."""
        if self.system_prompt:
            from tuneloop.data.readers import with_system_prompt

            conversations = with_system_prompt(conversations, self.system_prompt)
        if self.hints is not None:
            from tuneloop.data.hints import with_hints

            index, k = self.hints
            conversations = with_hints(conversations, index, k)
        return conversations

    def answer(self, conversations: list[list[dict[str, str]]], max_tokens: int) -> list[Any]:
        """Greedy generations for a batch of conversations, prompted as the run was trained
        (the synchronous path: `tuneloop.Model.generate` and each queued micro-batch)."""
        return self._generate(conversations, self.prepare(conversations), max_tokens)

    def _generate(
        self, raw: list[list[dict[str, str]]], prompts: list[Any], max_tokens: int
    ) -> list[Any]:
        from tuneloop.models.generate import generate

        if self.rerank is not None:
            return self._rerank(raw, prompts)
        gens, _ = generate(self.model, self.tokenizer, prompts, max_tokens, len(prompts))
        return gens

    def submit(self, job: _Job) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="tuneloop-serve", daemon=True)
            self._thread.start()
        self._queue.put(job)

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        from tuneloop.models.generate import encode_prompt

        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs = [first]
            while len(jobs) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                jobs.append(nxt)
            # one generate call per token budget; each call batches its requests
            for budget in sorted({j.max_tokens for j in jobs}):
                group = [j for j in jobs if j.max_tokens == budget]
                try:
                    conversations = [j.messages for j in group]
                    prompts = self.prepare(conversations)
                    gens = self._generate(conversations, prompts, budget)
                    results: list[Any] = [
                        (g, len(encode_prompt(self.tokenizer, p)))
                        for g, p in zip(gens, prompts, strict=True)
                    ]
                except Exception as err:  # the request fails, the server keeps serving
                    results = [err] * len(group)
                for job, result in zip(group, results, strict=True):
                    job.loop.call_soon_threadsafe(_resolve, job.future, result)

    def _rerank(self, raw: list[list[dict[str, str]]], prompts: list[Any]) -> list[Any]:
        """A run trained with label_rerank answers with its best candidate label, exactly as
        its evaluation does (the lookup reads the request's own last user message)."""
        from tuneloop.data.hints import query_text
        from tuneloop.evaluation.rerank import rerank_answers
        from tuneloop.models.generate import Generation

        assert self.rerank is not None
        queries = [query_text(m) for m in raw]  # type: ignore[arg-type]
        chosen = rerank_answers(
            self.model, self.tokenizer, prompts, queries, self.rerank, len(prompts)
        )
        out = []
        for r in chosen:
            tokens = len(self.tokenizer(r.text, add_special_tokens=False)["input_ids"])
            out.append(Generation(text=r.text, new_tokens=tokens, stopped=True))
        return out


def _resolve(future: asyncio.Future[Any], result: Any) -> None:
    if future.cancelled():
        return
    if isinstance(result, Exception):
        future.set_exception(result)
    else:
        future.set_result(result)


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # unknown OpenAI fields are ignored
    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, gt=0)
    max_completion_tokens: int | None = Field(default=None, gt=0)
    temperature: float | None = Field(default=None, ge=0)
    n: int = 1
    stream: bool = False


def _error(status: int, message: str, kind: str = "invalid_request_error") -> Any:
    from fastapi.responses import JSONResponse

    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return JSONResponse(status_code=status, content=body)


def create_app(ref: str, name: str | None = None, max_batch: int = 16) -> Any:
    """The FastAPI app serving `ref` under the model id `name` (default: the reference)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError

    model_id = name or ref
    state: dict[str, ModelWorker] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        state["worker"] = ModelWorker(ref, max_batch)
        yield
        state["worker"].close()

    app = FastAPI(title="tuneloop", lifespan=lifespan)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> Any:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in err.errors()
        )
        return _error(400, f"invalid request: {problems}")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "model": model_id}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": model_id, "object": "model", "created": 0, "owned_by": "tuneloop"}],
        }

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest) -> Any:
        if body.model != model_id:
            return _error(404, f"model {body.model!r} is not served here; this serves {model_id!r}")
        if body.stream:
            return _error(400, "stream=true is not supported yet; send stream=false")
        if body.n != 1:
            return _error(400, "n > 1 is not supported (greedy decoding gives one answer)")
        if body.temperature not in (None, 0, 0.0):
            return _error(
                400, "only greedy decoding is supported: send temperature 0 (or leave it out)"
            )
        roles = {m.role for m in body.messages}
        if not roles <= {"system", "user", "assistant"} or body.messages[-1].role != "user":
            return _error(
                400, "messages must use the roles system, user and assistant and end with user"
            )
        max_tokens = body.max_completion_tokens or body.max_tokens or 256
        loop = asyncio.get_running_loop()
        job = _Job(
            messages=[{"role": m.role, "content": m.content} for m in body.messages],
            max_tokens=max_tokens,
            future=loop.create_future(),
            loop=loop,
        )
        state["worker"].submit(job)
        try:
            gen, prompt_tokens = await job.future
        except TuneloopError as err:
            return _error(400, str(err))
        except Exception as err:
            return _error(500, f"generation failed: {type(err).__name__}: {err}", "server_error")
        completion_tokens = gen.new_tokens + int(gen.stopped)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_id,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": gen.text},
                    "finish_reason": "stop" if gen.stopped else "length",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    return app


def serve(
    ref: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    name: str | None = None,
    max_batch: int = 16,
) -> None:
    """Run the endpoint until interrupted (Ctrl-C stops it cleanly)."""
    import uvicorn

    from tuneloop.models import resolve

    resolve(ref)  # a bad reference fails here, with tuneloop's message, before the server starts
    uvicorn.run(create_app(ref, name, max_batch), host=host, port=port, log_level="info")
