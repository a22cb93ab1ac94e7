"""The OpenAI-compatible endpoint, over real HTTP, and evaluation of a model through it."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tuneloop.errors import TuneloopError
from tuneloop.evaluation import evaluate_file
from tuneloop.models.remote import chat_completion

from conftest import chat, serving_in_thread, write_jsonl

NAME = "tiny"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_model: Path) -> Iterator[str]:
    """`tuneloop serve` on the tiny model, in this process, on a free port."""
    from tuneloop.serving import create_app

    with serving_in_thread(create_app(str(tiny_model), name=NAME, max_batch=4)) as url:
        yield f"{url}/v1"


def _post(url: str, body: object) -> tuple[int, dict]:
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_models_and_a_chat_completion(server: str, tiny_model: Path) -> None:
    with urllib.request.urlopen(f"{server}/models", timeout=10) as resp:
        listing = json.loads(resp.read())
    assert [m["id"] for m in listing["data"]] == [NAME]
    status, reply = _post(
        f"{server}/chat/completions",
        {"model": NAME, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 5},
    )
    assert status == 200 and reply["object"] == "chat.completion"
    (choice,) = reply["choices"]
    assert choice["message"]["role"] == "assistant"
    # the endpoint answers exactly what batched greedy generation answers in-process
    from tuneloop.models import load
    from tuneloop.models.generate import encode_prompt, generate

    model, tokenizer, _ = load(str(tiny_model))
    prompt = [{"role": "user", "content": "Hello"}]
    (expected,), _ = generate(model, tokenizer, [prompt], 5, 1)
    assert choice["message"]["content"] == expected.text
    assert choice["finish_reason"] == ("stop" if expected.stopped else "length")
    assert reply["usage"] == {
        "prompt_tokens": len(encode_prompt(tokenizer, prompt)),
        "completion_tokens": expected.new_tokens,
        "total_tokens": len(encode_prompt(tokenizer, prompt)) + expected.new_tokens,
    }


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"model": "other", "messages": [{"role": "user", "content": "x"}]}, 404, "not served"),
        (
            {"model": NAME, "messages": [{"role": "user", "content": "x"}], "temperature": 3},
            400,
            "temperature",
        ),
        (
            {"model": NAME, "messages": [{"role": "user", "content": "x"}], "max_tokens": True},
            400,
            "max_tokens",
        ),
        (
            {"model": NAME, "messages": [{"role": "user", "content": "x"}], "n": 0},
            400,
            "n:",
        ),
        (
            {"model": NAME, "messages": [{"role": "user", "content": "x " * 3000}]},
            400,
            "context is 2048 tokens",
        ),
        (
            {"model": NAME, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2047},
            400,
            "past this model's context of 2048",
        ),
        (
            {"model": NAME, "messages": [{"role": "tool", "content": "x"}]},
            400,
            "role",
        ),
        ({"model": NAME, "messages": []}, 400, "messages"),
        ({"model": NAME}, 400, "messages: Field required"),
        (
            {"model": NAME, "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
            400,
            "max_tokens",
        ),
        (
            {"model": NAME, "messages": [{"role": "assistant", "content": "x"}]},
            400,
            "end with a user message",
        ),
    ],
)
def test_bad_requests_get_openai_style_errors(
    server: str, body: dict, status: int, needle: str
) -> None:
    got, reply = _post(f"{server}/chat/completions", body)
    assert got == status
    assert needle in reply["error"]["message"]
    assert reply["error"]["type"]


def test_eval_through_the_endpoint_equals_local_eval(
    server: str, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = write_jsonl(
        tmp_path / "d.jsonl",
        [chat(f"Where is order {i}?", "It has shipped.") for i in range(5)],
    )
    monkeypatch.setenv("OPENAI_BASE_URL", server)
    monkeypatch.setenv("TUNELOOP_REMOTE_CONCURRENCY", "1")  # batch 1 on both sides
    remote = evaluate_file(
        f"openai:{NAME}", data, metrics=["exact_match", "rouge_l"], max_new_tokens=6, batch_size=1
    )
    local = evaluate_file(
        str(tiny_model), data, metrics=["exact_match", "rouge_l"], max_new_tokens=6, batch_size=1
    )
    assert [e["prediction"] for e in remote.examples] == [e["prediction"] for e in local.examples]
    assert [e["scores"]["stopped"] for e in remote.examples] == [
        e["scores"]["stopped"] for e in local.examples
    ]
    assert remote.metrics == local.metrics
    assert remote.eval_id is not None  # stored in the registry like any eval

    with pytest.raises(TuneloopError, match="perplexity needs the model's weights"):
        evaluate_file(f"openai:{NAME}", data, metrics=["perplexity"])


def test_concurrent_requests_are_answered_in_order(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight requests at once share micro-batches; each gets its own answer back."""
    monkeypatch.setenv("OPENAI_BASE_URL", server)
    prompts = [[{"role": "user", "content": f"Question number {i}"}] for i in range(8)]
    sequential = [chat_completion(f"openai:{NAME}", p, 4) for p in prompts]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda p: chat_completion(f"openai:{NAME}", p, 4), prompts))
    assert [r["choices"][0]["message"]["content"] for r in together] == [
        r["choices"][0]["message"]["content"] for r in sequential
    ]


def test_unset_base_url_and_a_dead_endpoint_are_clear_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(TuneloopError, match="set OPENAI_BASE_URL"):
        chat_completion("openai:x", [{"role": "user", "content": "hi"}], 4)
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{_free_port()}/v1")
    with pytest.raises(TuneloopError, match=r"request to .* failed"):
        chat_completion("openai:x", [{"role": "user", "content": "hi"}], 4)


def test_serve_with_a_bad_model_fails_before_starting(tmp_path: Path) -> None:
    from conftest import assert_one_line_error, run_cli

    proc = run_cli("serve", str(tmp_path / "no-such-model"), "--port", str(_free_port()))
    assert proc.returncode != 0
    assert_one_line_error(proc, "no-such-model")


def test_text_parts_and_the_developer_role_are_read_as_plain_messages(server: str) -> None:
    """What the openai client sends for multi-part messages: content as a list of parts."""
    parts = {
        "model": NAME,
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}],
            },
        ],
        "max_tokens": 4,
    }
    plain = {
        "model": NAME,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello"},
        ],
        "max_tokens": 4,
    }
    got, a = _post(f"{server}/chat/completions", parts)
    assert got == 200
    assert _post(f"{server}/chat/completions", plain)[1]["choices"] == a["choices"]
    image = {
        **parts,
        "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
        ],
    }
    got, reply = _post(f"{server}/chat/completions", image)
    assert got == 400 and "content" in reply["error"]["message"]


def test_rows_joining_and_leaving_a_running_batch_decode_as_if_alone(tiny_model: Path) -> None:
    """Continuous batching: requests that join a batch mid-decode, at different prompt
    lengths, get the tokens greedy `model.generate` gives each of them alone."""
    import torch

    from tuneloop.models import load
    from tuneloop.models.decode import Decoder, Row
    from tuneloop.models.generate import encode_prompt

    model, tokenizer, _ = load(str(tiny_model))
    texts = ["Hello", "A much longer question about order 12345 and its delivery", "Hi there"]
    encoded = [encode_prompt(tokenizer, [{"role": "user", "content": t}]) for t in texts]
    alone = []
    for ids in encoded:
        with torch.inference_mode():
            out = model.generate(
                input_ids=torch.tensor([ids]),
                max_new_tokens=12,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=tokenizer.pad_token_id,
            )
        alone.append(out[0, len(ids) :].tolist())
    decoder = Decoder(model, tokenizer.pad_token_id)
    rows = [Row(key=i, prompt_ids=ids, max_new_tokens=12) for i, ids in enumerate(encoded)]
    decoder.add(rows[:1])
    for _ in range(3):
        decoder.step()
    decoder.add(rows[1:2])
    decoder.step()
    decoder.add(rows[2:])
    while len(rows[2].ids) < 12:
        decoder.step()
        if len(rows[0].ids) == 12 and 0 in {r.key for r in decoder.rows}:
            decoder.keep({1, 2})  # the first leaves; the others go on
    assert len(decoder) == 2
    for row, want in zip(rows, alone, strict=True):
        assert row.ids[:12] == want
