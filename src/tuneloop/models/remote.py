"""Models behind an OpenAI-compatible endpoint: `openai:MODEL` in any `--model`.

The base URL comes from `OPENAI_BASE_URL` (for example `http://127.0.0.1:8000/v1` for
`tuneloop serve`) and the key, if the endpoint needs one, from `OPENAI_API_KEY`; neither is
ever written to the registry. Requests run a few at a time (`TUNELOOP_REMOTE_CONCURRENCY`,
default 8) with temperature 0, so an endpoint that decodes greedily gives the same answers
as the model evaluated locally.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tuneloop.errors import TuneloopError
from tuneloop.models.generate import Conversation, Generation

PREFIX = "openai:"


def is_remote(ref: str) -> bool:
    return ref.startswith(PREFIX)


def _base_url(ref: str) -> str:
    base = os.environ.get("OPENAI_BASE_URL", "").rstrip("/")
    if not base:
        raise TuneloopError(
            f"{ref}: set OPENAI_BASE_URL to the endpoint (e.g. http://127.0.0.1:8000/v1 for "
            "`tuneloop serve`), and OPENAI_API_KEY if it needs a key"
        )
    return base


def chat_completion(
    ref: str,
    messages: Conversation,
    max_tokens: int,
    timeout: float = 300,
    sampling: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One chat completion from `openai:MODEL` (greedy unless `sampling` gives
    temperature, top_p or seed); the parsed JSON reply."""
    base = _base_url(ref)
    body = {
        "model": ref.removeprefix(PREFIX),
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        **(sampling or {}),
    }
    headers = {"Content-Type": "application/json"}
    if os.environ.get("OPENAI_API_KEY"):
        headers["Authorization"] = f"Bearer {os.environ['OPENAI_API_KEY']}"
    req = urllib.request.Request(
        f"{base}/chat/completions", json.dumps(body).encode(), headers, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as err:
        detail = err.read().decode("utf-8", "replace")[:300]
        raise TuneloopError(f"{ref}: {base} answered HTTP {err.code}: {detail}") from None
    except ValueError as err:  # not JSON
        raise TuneloopError(f"{ref}: reply from {base} is not JSON: {err}") from None
    except OSError as err:
        raise TuneloopError(f"{ref}: request to {base} failed: {err}") from None


def _answer(ref: str, reply: dict[str, Any]) -> Generation:
    try:
        choice = reply["choices"][0]
        text = str(choice["message"]["content"] or "")
    except (KeyError, IndexError, TypeError):
        raise TuneloopError(f"{ref}: unexpected reply {str(reply)[:200]}") from None
    usage = reply.get("usage") or {}
    return Generation(
        text=text.strip(),
        new_tokens=int(usage.get("completion_tokens") or 0),
        stopped=choice.get("finish_reason") == "stop",
    )


def remote_generate(
    ref: str,
    prompts: list[Conversation],
    max_new_tokens: int,
    progress: Callable[[int], None] | None = None,
    sampling: dict[str, Any] | None = None,
) -> tuple[list[Generation], dict[str, float]]:
    """Answers for every prompt from the endpoint, in order, plus throughput stats.
    sampling: temperature / top_p / seed for every request (a seed is offset by the
    prompt's index, so drafts differ but a rerun repeats them)."""
    _base_url(ref)  # fail before starting threads
    workers = int(os.environ.get("TUNELOOP_REMOTE_CONCURRENCY", "8"))
    start = time.perf_counter()

    def one(item: tuple[int, Conversation]) -> Generation:
        i, prompt = item
        options = dict(sampling or {})
        if "seed" in options:
            options["seed"] = int(options["seed"]) + i
        gen = _answer(ref, chat_completion(ref, prompt, max_new_tokens, sampling=options))
        if progress:
            progress(1)
        return gen

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        gens = list(pool.map(one, enumerate(prompts)))
    seconds = time.perf_counter() - start
    new = sum(g.new_tokens for g in gens)
    return gens, {"seconds": seconds, "new_tokens": new, "tokens_per_s": new / max(seconds, 1e-9)}
