"""The FastAPI app of `tuneloop serve`: OpenAI-shaped routes over the model worker.

Routes: `POST /v1/chat/completions` and `POST /v1/completions` (streaming as server-sent
events and not), `GET /v1/models`, `GET /health`, `GET /metrics` (Prometheus). With a keys
file every route but `/health` needs `Authorization: Bearer KEY`; there is no interactive
`/docs` or `/openapi.json` (nothing to leak, nothing unauthenticated to probe).

Every limit is checked before a request is queued, and answered as OpenAI answers: 400 with
the token counts for a prompt (plus `max_tokens`) longer than the model's context, 429 with
`Retry-After` when the queue is full, 401 for a missing or wrong key. A client that hangs up
cancels its request within one decoding step (the worker drops its row).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt

from tuneloop.errors import TuneloopError
from tuneloop.serving.worker import Event, Job, ModelWorker, Params, QueueFull

DEFAULT_MAX_TOKENS = 256
MAX_N = 8


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, tool fields: ignored
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


Number = StrictInt | StrictFloat


class StreamOptions(BaseModel):
    include_usage: StrictBool = False


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")  # unknown OpenAI fields are ignored
    model: str
    max_tokens: Annotated[StrictInt, Field(gt=0)] | None = None
    temperature: Annotated[Number, Field(ge=0, le=2)] | None = None
    top_p: Annotated[Number, Field(gt=0, le=1)] | None = None
    seed: StrictInt | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    n: Annotated[StrictInt, Field(ge=1, le=MAX_N)] = 1
    stream: StrictBool = False
    stream_options: StreamOptions | None = None

    def params(self, budget: int) -> Params:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return Params(
            max_tokens=budget,
            temperature=float(self.temperature or 0.0),
            top_p=float(self.top_p if self.top_p is not None else 1.0),
            seed=self.seed,
            stop=[s for s in stops if s],
            n=self.n,
        )


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: Annotated[StrictInt, Field(gt=0)] | None = None


class CompletionRequest(_Sampling):
    prompt: str


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=64)  # the completion's id
    rating: Literal["up", "down", 1, -1] | None = None
    comment: str | None = Field(default=None, max_length=10_000)
    correction: str | None = Field(default=None, max_length=100_000)


def _error(status: int, message: str, kind: str = "invalid_request_error", **headers: str) -> Any:
    from fastapi.responses import JSONResponse

    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return JSONResponse(status_code=status, content=body, headers=headers or None)


class _Metrics:
    """Prometheus series for one app (its own registry, so tests can run several apps)."""

    def __init__(self, worker_state: dict[str, Any]) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "tuneloop_requests",
            "Requests by route and status (by adapter: tuneloop_adapter_requests)",
            ["route", "status"],
            registry=r,
        )
        self.by_adapter = Counter(
            "tuneloop_adapter_requests",
            "Requests by the served name that answered (after splits) and status",
            ["adapter", "status"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "tuneloop_prompt_tokens", "Prompt tokens", ["model"], registry=r
        )
        self.generated = Counter(
            "tuneloop_generated_tokens", "Generated tokens", ["model"], registry=r
        )
        self.ttft = Histogram(
            "tuneloop_time_to_first_token_seconds",
            "Time to first token",
            ["model"],
            registry=r,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.latency = Histogram(
            "tuneloop_request_seconds",
            "End-to-end latency",
            ["model"],
            registry=r,
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
        )
        depth = Gauge("tuneloop_queue_depth", "Requests waiting for the batch", registry=r)
        depth.set_function(lambda: worker_state["worker"].depth if "worker" in worker_state else 0)
        active = Gauge("tuneloop_active_sequences", "Sequences being decoded", registry=r)
        active.set_function(
            lambda: worker_state["worker"].active if "worker" in worker_state else 0
        )

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


def create_app(
    ref: str,
    name: str | None = None,
    max_batch: int = 16,
    max_queue: int = 64,
    keys: str | None = None,
    max_tokens_limit: int | None = None,
    worker: ModelWorker | None = None,
    log_traffic: bool = True,
    redact_pii: bool = False,
    adapters: dict[str, str] | None = None,
    registry_keys: bool = False,
    docs: Any = None,
    retrieval_k: int = 3,
) -> Any:
    """The FastAPI app serving `ref` under the model id `name` (default: the reference).

    keys: a keys file (serving/auth.py), or registry_keys: the registry's keys; then every
    route but /health needs a key.
    max_tokens_limit: the most tokens one request may ask for (default: the context).
    worker: an already loaded worker (the app then does not close it).
    log_traffic: write every request to the registry's traffic table (serving/traffic.py);
    redact_pii: with personal data redacted first.
    adapters: served name -> LoRA run on the same base (serving/adapters.py).
    docs: RAG for the served model: passages from these documents or this saved index
    (a path, or a loaded `tuneloop.data.retrieval.RetrievalIndex`), `retrieval_k` per
    chat request, listed as `citations`.
    """
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import Response, StreamingResponse

    from tuneloop.serving.auth import KeyStore

    model_id = name or ref
    if keys and registry_keys:
        raise TuneloopError("give a keys file or the registry's keys, not both")
    store = KeyStore(None) if registry_keys else KeyStore(keys) if keys else None
    state: dict[str, Any] = {}
    metrics = _Metrics(state)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        state["worker"] = worker or await asyncio.to_thread(ModelWorker, ref, max_batch, max_queue)
        if docs is not None:
            from tuneloop.data.retrieval import open_index

            index = (
                await asyncio.to_thread(open_index, docs) if isinstance(docs, str | Path) else docs
            )
            w = state["worker"]
            w.prompting = w.prompting.with_retrieval(index, retrieval_k)
        state["adapters"] = await asyncio.to_thread(_adapter_set, state["worker"])
        if log_traffic:
            from tuneloop.serving.traffic import TrafficLog

            state["traffic"] = TrafficLog(redact=redact_pii)
        yield
        if worker is None:
            await asyncio.to_thread(state["worker"].close)
        if "traffic" in state:
            await asyncio.to_thread(state["traffic"].close)

    app = FastAPI(
        title="tuneloop", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )

    def _adapter_set(w: ModelWorker) -> Any:
        """The served names; the start-up adapters loaded (before the decoding thread)."""
        from tuneloop.models import resolve
        from tuneloop.serving.adapters import AdapterSet, install

        resolved = resolve(ref)
        if adapters and resolved.adapter:
            raise TuneloopError(
                f"{ref} is itself a LoRA run; serve adapters over a base model "
                f"(tuneloop serve {resolved.base} --adapter NAME={ref} ...)"
            )
        aset = AdapterSet(model_id, ref, resolved.base, w.prompting)
        for adapter_name, adapter_ref in (adapters or {}).items():
            install(w, aset, adapter_name, adapter_ref)
        return aset

    app.add_middleware(_Gate, store=store, metrics=metrics)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> Any:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in err.errors()
        )
        return _error(400, f"invalid request: {problems}")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok" if "worker" in state else "loading", "model": model_id}

    @app.get("/metrics")
    async def prometheus() -> Any:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": n, "object": "model", "created": 0, "owned_by": "tuneloop"}
                for n in state["adapters"].names()
            ],
        }

    def _record(
        request: Request,
        rid: str,
        route: str,
        status: int,
        messages: list[dict[str, str]],
        body: _Sampling | None = None,
        job: Job | None = None,
        answers: list[str] | None = None,
        finish: list[str | None] | None = None,
        tokens: int = 0,
        error: str | None = None,
    ) -> None:
        """One traffic row (the background writer stores it; never blocks the answer)."""
        served_name = job.served if job is not None and job.served else model_id
        metrics.by_adapter.labels(served_name, str(status)).inc()
        log = state.get("traffic")
        if log is None:
            return
        key = getattr(request.state, "key", None)
        now = time.perf_counter()
        params = {}
        if body is not None:
            params = body.model_dump(
                include={"max_tokens", "temperature", "top_p", "seed", "stop", "n", "stream"}
            )
        asked = body.model if body is not None else model_id
        served = job.served if job is not None and job.served else asked
        try:
            served_by = state["adapters"].ref_of(served)
        except KeyError:  # removed since, or never served
            served_by = served
        log.log(
            {
                "request_id": rid,
                "model": asked,
                "served_by": served_by,
                "route": route,
                "status": status,
                "key_id": key.id if key is not None else None,
                "messages": messages,
                "answers": answers or [],
                "finish_reasons": finish or [],
                "params": params,
                "prompt_tokens": len(job.prompt_ids) if job else 0,
                "completion_tokens": tokens,
                "latency_s": now - job.submitted if job else 0.0,
                "ttft_s": job.first_token - job.submitted if job and job.first_token else None,
                "error": error,
            }
        )

    def _budget(body: _Sampling, prompt_tokens: int, asked: int | None) -> int | Any:
        """max_tokens for this request, or the 400 that says why it does not fit."""
        w: ModelWorker = state["worker"]
        limit = max_tokens_limit or w.context
        if asked is not None and asked > limit:
            return _error(400, f"max_tokens is {asked}; this server allows at most {limit}")
        room = w.context - prompt_tokens
        if room < 1:
            return _error(
                400,
                f"the prompt is {prompt_tokens} tokens; this model's context is {w.context} "
                "tokens: shorten the messages",
            )
        if asked is not None and asked > room:
            return _error(
                400,
                f"the prompt ({prompt_tokens} tokens) plus max_tokens ({asked}) is "
                f"{prompt_tokens + asked} tokens, past this model's context of {w.context}: "
                "lower max_tokens or shorten the messages",
            )
        return asked or min(DEFAULT_MAX_TOKENS, room, limit)

    async def _run(
        request: Request,
        body: _Sampling,
        job: Job,
        events: asyncio.Queue[Event],
        kind: str,
        messages: list[dict[str, str]],
    ) -> Any:
        w: ModelWorker = state["worker"]
        rid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"
        route = request.url.path
        try:
            w.submit(job)
        except QueueFull as err:
            _record(request, rid, route, 429, messages, body, error=str(err))
            return _error(
                429, str(err), "rate_limit_error", **{"Retry-After": str(err.retry_after)}
            )
        metrics.prompt_tokens.labels(job.served).inc(len(job.prompt_ids))
        created = int(time.time())
        if body.stream:
            return StreamingResponse(
                _stream(request, body, job, events, kind, rid, created, messages),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        texts = [""] * job.params.n
        finish: list[str | None] = [None] * job.params.n
        tokens = 0
        done = 0
        checked = time.monotonic()
        try:
            while done < job.params.n:
                try:
                    event = await asyncio.wait_for(events.get(), timeout=0.25)
                except TimeoutError:
                    event = None
                # every quarter second, also while tokens keep coming: a client that hung
                # up must not keep its rows decoding to the end
                if event is None or time.monotonic() - checked >= 0.25:
                    checked = time.monotonic()
                    if await request.is_disconnected():
                        job.cancel()
                        _record(request, rid, route, 499, messages, body, job, texts, finish,
                                tokens, "client disconnected")  # fmt: skip
                        return Response(status_code=499)
                if event is None:
                    continue
                if event.kind == "error":
                    reply = _failure(event.error)
                    _record(request, rid, route, reply.status_code, messages, body, job,
                            error=str(event.error))  # fmt: skip
                    return reply
                if event.kind == "delta":
                    texts[event.index] += event.text
                else:
                    finish[event.index] = event.finish_reason
                    tokens += event.tokens
                    done += 1
        finally:
            job.cancel()  # a no-op once finished; stops the rows of a request cut short
        _observe(job, tokens)
        _record(request, rid, route, 200, messages, body, job, texts, finish, tokens)
        if kind == "chat":
            choices = [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": texts[i]},
                    "finish_reason": finish[i],
                    "logprobs": None,
                }
                for i in range(job.params.n)
            ]
        else:
            choices = [
                {"index": i, "text": texts[i], "finish_reason": finish[i], "logprobs": None}
                for i in range(job.params.n)
            ]
        reply = {
            "id": rid,
            "object": "chat.completion" if kind == "chat" else "text_completion",
            "created": created,
            "model": body.model,
            "choices": choices,
            "usage": _usage(len(job.prompt_ids), tokens),
        }
        if job.citations:
            reply["citations"] = job.citations
        return reply

    def _citation(hit: Any) -> dict[str, Any]:
        """A retrieved passage as the response lists it ([n] in the answer is `index` n)."""
        return {"index": hit.rank, "source": hit.chunk.cite(), "score": round(hit.score, 4),
                "text": hit.chunk.text}  # fmt: skip

    def _observe(job: Job, tokens: int) -> None:
        metrics.generated.labels(job.served).inc(tokens)
        now = time.perf_counter()
        metrics.latency.labels(job.served).observe(now - job.submitted)
        if job.first_token is not None:
            metrics.ttft.labels(job.served).observe(job.first_token - job.submitted)

    async def _stream(
        request: Request,
        body: _Sampling,
        job: Job,
        events: asyncio.Queue[Event],
        kind: str,
        rid: str,
        created: int,
        messages: list[dict[str, str]],
    ) -> AsyncIterator[str]:
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
        tokens = done = 0
        texts = [""] * job.params.n
        finish: list[str | None] = [None] * job.params.n
        route = request.url.path
        status = 499  # until the stream ends: a client that leaves first hung up

        def chunk(
            choices: list[dict[str, Any]], usage: Any = None, first_chunk: bool = False
        ) -> str:
            data: dict[str, Any] = {
                "id": rid,
                "object": obj,
                "created": created,
                "model": body.model,
                "choices": choices,
            }
            if body.stream_options and body.stream_options.include_usage:
                data["usage"] = usage
            if first_chunk and job.citations:
                data["citations"] = job.citations
            return f"data: {json.dumps(data)}\n\n"

        def piece(i: int, text: str | None, finish: str | None, first: bool = False) -> dict:
            if kind == "chat":
                delta: dict[str, Any] = {"role": "assistant"} if first else {}
                if text is not None:
                    delta["content"] = text
                return {"index": i, "delta": delta, "finish_reason": finish, "logprobs": None}
            return {"index": i, "text": text or "", "finish_reason": finish, "logprobs": None}

        try:
            if kind == "chat":
                first = [piece(i, "", None, first=True) for i in range(job.params.n)]
                yield chunk(first, first_chunk=True)
            while done < job.params.n:
                event = await events.get()
                if event.kind == "error":
                    status = 500
                    err = {"error": {"message": str(event.error), "type": "server_error"}}
                    yield f"data: {json.dumps(err)}\n\n"
                    return
                if event.kind == "delta":
                    texts[event.index] += event.text
                    yield chunk([piece(event.index, event.text, None)])
                else:
                    finish[event.index] = event.finish_reason
                    tokens += event.tokens
                    done += 1
                    yield chunk([piece(event.index, None, event.finish_reason)])
            if body.stream_options and body.stream_options.include_usage:
                data = {
                    "id": rid,
                    "object": obj,
                    "created": created,
                    "model": body.model,
                    "choices": [],
                    "usage": _usage(len(job.prompt_ids), tokens),
                }
                yield f"data: {json.dumps(data)}\n\n"
            status = 200
            yield "data: [DONE]\n\n"
            _observe(job, tokens)
        finally:
            job.cancel()  # the client hung up (or the stream ended): free the rows
            _record(request, rid, route, status, messages, body, job, texts, finish, tokens,
                    None if status == 200 else "client disconnected" if status == 499
                    else "generation failed")  # fmt: skip

    def _events() -> tuple[asyncio.Queue[Event], Any]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Event] = asyncio.Queue()

        def emit(event: Event) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, event)

        return queue, emit

    @app.post("/v1/chat/completions")
    async def chat(request: Request, body: ChatRequest) -> Any:
        served = state["adapters"].route(body.model)
        if served is None:
            return _unknown(body.model)
        roles = [("system" if m.role == "developer" else m.role) for m in body.messages]
        if roles[-1] != "user":
            return _error(400, "messages must end with a user message")
        messages = [
            {"role": r, "content": m.text()} for r, m in zip(roles, body.messages, strict=True)
        ]
        w: ModelWorker = state["worker"]
        if sum(len(m["content"]) for m in messages) > 64 * w.context:
            return _error(
                400, f"the messages are far longer than this model's context of {w.context} tokens"
            )
        try:
            prompting = state["adapters"].prompting(served)
            prompt_ids, prepared, hits = await asyncio.to_thread(w.encode_chat, messages, prompting)
        except TuneloopError as err:
            return _error(400, str(err))
        budget = _budget(body, len(prompt_ids), body.max_completion_tokens or body.max_tokens)
        if not isinstance(budget, int):
            rid = f"chatcmpl-{uuid.uuid4().hex}"
            _record(request, rid, request.url.path, 400, messages, body,
                    error=json.loads(budget.body)["error"]["message"])  # fmt: skip
            return budget
        events, emit = _events()
        rerank = (messages, prepared) if prompting.rerank is not None else None
        job = Job(
            prompt_ids,
            body.params(budget),
            emit,
            rerank=rerank,
            adapter=state["adapters"].adapter_name(served),
            prompting=prompting,
            served=served,
            citations=[_citation(h) for h in hits],
        )
        return await _run(request, body, job, events, "chat", messages)

    @app.post("/v1/feedback")
    async def feedback(request: Request, body: FeedbackRequest) -> Any:
        """Thumbs up or down, a comment or a corrected answer for a logged response."""
        from tuneloop import registry
        from tuneloop.errors import RegistryError

        if "traffic" not in state:
            return _error(400, "this server does not log traffic (started with --no-log)")
        if body.rating is None and not body.comment and body.correction is None:
            return _error(400, "feedback needs a rating, a comment or a correction")
        await asyncio.to_thread(state["traffic"].flush)  # the request may still be queued
        key = getattr(request.state, "key", None)
        rating = (
            {"up": 1, "down": -1, 1: 1, -1: -1}[body.rating] if body.rating is not None else None
        )
        try:
            record = await asyncio.to_thread(
                registry.add_feedback, body.id, rating, body.comment, body.correction,
                key.id if key is not None else None,
            )  # fmt: skip
        except RegistryError:
            return _error(404, f"no logged response with id {body.id!r}", "not_found_error")
        return {"object": "feedback", "id": record.id, "response_id": body.id, "rating": rating}

    @app.post("/v1/completions")
    async def completions(request: Request, body: CompletionRequest) -> Any:
        served = state["adapters"].route(body.model)
        if served is None:
            return _unknown(body.model)
        w: ModelWorker = state["worker"]
        if state["adapters"].prompting(served).rerank is not None:
            return _error(400, "this run answers by label reranking: use /v1/chat/completions")
        if len(body.prompt) > 64 * w.context:
            return _error(
                400, f"the prompt is far longer than this model's context of {w.context} tokens"
            )
        prompt_ids = await asyncio.to_thread(w.encode_text, body.prompt)
        budget = _budget(body, len(prompt_ids), body.max_tokens)
        if not isinstance(budget, int):
            return budget
        events, emit = _events()
        job = Job(
            prompt_ids,
            body.params(budget),
            emit,
            adapter=state["adapters"].adapter_name(served),
            served=served,
        )
        return await _run(
            request, body, job, events, "completion", [{"role": "user", "content": body.prompt}]
        )

    def _unknown(name: str) -> Any:
        served = ", ".join(repr(n) for n in state["adapters"].names())
        return _error(
            404, f"model {name!r} is not served here; this serves {served}", "not_found_error"
        )

    def _admin(request: Request) -> Any:
        """None for an admin key, else the error to answer."""
        if store is None:
            return _error(
                403,
                "admin routes need keys: start the server with --keys or --registry-keys "
                "and use an admin key (tuneloop keys create --admin)",
                "permission_error",
            )
        key = getattr(request.state, "key", None)
        if key is None or key.scope != "admin":
            return _error(403, "this route needs an admin key", "permission_error")
        return None

    def _listing() -> dict[str, Any]:
        aset = state["adapters"]
        return {
            "base": {"name": aset.base_name, "ref": aset.base_ref},
            "adapters": [
                {"name": a.name, "ref": a.ref, "weights": a.peft_name}
                for a in sorted(aset.adapters.values(), key=lambda a: a.name)
            ],
            "splits": [
                {"model": sp.model, "candidate": sp.candidate, "share": sp.share}
                for sp in aset.splits.values()
            ],
        }

    @app.get("/v1/admin/adapters")
    async def list_adapters(request: Request) -> Any:
        return _admin(request) or _listing()

    @app.post("/v1/admin/adapters")
    async def put_adapter(request: Request, body: AdapterRequest) -> Any:
        """Add an adapter, or replace the weights behind a served name (hot swap)."""
        from tuneloop.serving.adapters import install

        if (denied := _admin(request)) is not None:
            return denied
        w: ModelWorker = state["worker"]
        future = w.call(lambda worker: install(worker, state["adapters"], body.name, body.ref))
        try:
            await asyncio.wrap_future(future)
        except TuneloopError as err:
            return _error(400, str(err))
        return _listing()

    @app.delete("/v1/admin/adapters/{name}")
    async def delete_adapter(request: Request, name: str) -> Any:
        from tuneloop.serving.adapters import uninstall

        if (denied := _admin(request)) is not None:
            return denied
        w: ModelWorker = state["worker"]
        future = w.call(lambda worker: uninstall(worker, state["adapters"], name))
        try:
            await asyncio.wrap_future(future)
        except TuneloopError as err:
            return _error(404, str(err), "not_found_error")
        return _listing()

    @app.post("/v1/admin/split")
    async def put_split(request: Request, body: SplitRequest) -> Any:
        """Send `share` of the requests for `model` to adapter `candidate` (0 removes it)."""
        if (denied := _admin(request)) is not None:
            return denied
        try:
            state["adapters"].set_split(body.model, body.candidate, body.share)
        except TuneloopError as err:
            return _error(400, str(err))
        return _listing()

    return app


class AdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._-]+$")
    ref: str = Field(min_length=1, max_length=1000)


class SplitRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    candidate: str
    share: Annotated[Number, Field(ge=0, le=1)]


class _Gate:
    """Pure ASGI middleware (a `BaseHTTPMiddleware` would break disconnect detection and
    streaming): the key check on every route but /health, and the request counter."""

    def __init__(self, app: Any, store: Any, metrics: _Metrics) -> None:
        self.app, self.store, self.metrics = app, store, metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if self.store is not None and path != "/health":
            header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            key = header[7:].strip() if header.lower().startswith("bearer ") else None
            record = await asyncio.to_thread(self.store.check, key)
            if record is None:
                self.metrics.requests.labels(path, "401").inc()
                response = _error(
                    401,
                    "missing or invalid API key: send Authorization: Bearer KEY",
                    "authentication_error",
                )
                await response(scope, receive, send)
                return
            scope.setdefault("state", {})["key"] = record
        status = {"code": 0}

        async def counting_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            if path.startswith("/v1/") and status["code"]:
                self.metrics.requests.labels(path, str(status["code"])).inc()


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _failure(error: BaseException | None) -> Any:
    if isinstance(error, QueueFull):
        return _error(503, str(error), "server_error", **{"Retry-After": str(error.retry_after)})
    if isinstance(error, TuneloopError):
        return _error(400, str(error))
    return _error(500, f"generation failed: {type(error).__name__}: {error}", "server_error")


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serve(
    ref: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    name: str | None = None,
    max_batch: int = 16,
    max_queue: int = 64,
    keys: str | None = None,
    max_tokens_limit: int | None = None,
    allow_no_keys: bool = False,
    drain_seconds: float = 5.0,
    log_traffic: bool = True,
    redact_pii: bool = False,
    adapters: dict[str, str] | None = None,
    registry_keys: bool = False,
    docs: str | None = None,
    retrieval_k: int = 3,
) -> None:
    """Run the endpoint until interrupted. SIGTERM or Ctrl-C stops taking requests, lets
    running ones finish for up to `drain_seconds`, cancels the rest and exits."""
    import uvicorn

    from tuneloop.models import resolve

    if host not in LOOPBACK and not keys and not registry_keys and not allow_no_keys:
        raise TuneloopError(
            f"--host {host} would open the model to the network with no keys: create one "
            "with `tuneloop keys create --file keys.jsonl NAME` and pass --keys keys.jsonl "
            "(or --allow-no-keys on a network you trust)"
        )
    resolve(ref)  # a bad reference fails here, with tuneloop's message, before the server starts
    index = None
    if docs is not None:  # so do missing or unreadable documents
        from tuneloop.data.retrieval import open_index

        index = open_index(docs)
    app = create_app(
        ref,
        name,
        max_batch,
        max_queue,
        keys,
        max_tokens_limit,
        log_traffic=log_traffic,
        redact_pii=redact_pii,
        adapters=adapters,
        registry_keys=registry_keys,
        docs=index,
        retrieval_k=retrieval_k,
    )
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="info",
        timeout_graceful_shutdown=max(1, int(drain_seconds)),
    )
