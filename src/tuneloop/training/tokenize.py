"""Turning rows into training examples: token ids plus labels, with the loss where it belongs.

SFT: the conversation is rendered once with the model's chat template and tokenised once;
each assistant turn's character span is found by rendering the conversation up to that turn
(with and without it), and tokens inside those spans are the only ones with a loss. This
works for any template, including ones without `{% generation %}` markers, and the span of a
turn includes what the template writes after the answer (the end-of-turn token), so tuned
models learn to stop.

Pretraining: documents are tokenised, joined with the end-of-sequence token and cut into
blocks of exactly `block_size` tokens, so no compute goes to padding.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tuneloop.data.formats import Conversation
from tuneloop.errors import TrainingError

IGNORE = -100


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    positions: list[int] | None = None  # packed rows only: restart at 0 per example

    @property
    def length(self) -> int:
        return len(self.input_ids)

    @property
    def tokens(self) -> int:
        return len(self.input_ids)

    @property
    def num_targets(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


@dataclass
class Tokenized:
    examples: list[Example]
    kept: list[int]  # index of the source row of each example (SFT)
    dropped: Counter[str] = field(default_factory=Counter)
    truncated: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "examples": len(self.examples),
            "dropped": dict(self.dropped),
            "truncated": self.truncated,
            "tokens": sum(len(e.input_ids) for e in self.examples),
            "target_tokens": sum(e.num_targets for e in self.examples),
        }


def render_chat(tokenizer: Any, messages: Conversation, generation_prompt: bool = False) -> str:
    """A conversation as training renders it (the GGUF export's parity check uses it too)."""
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt
    )


def assistant_spans(
    tokenizer: Any, conversation: Conversation, last_only: bool = False
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans that carry the loss.

    Raises TrainingError if the template is not prefix-stable (rendering the first k messages
    is not a prefix of rendering them all), because then no span can be trusted.
    """
    text = render_chat(tokenizer, conversation)
    turns = [i for i, m in enumerate(conversation) if m["role"] == "assistant"]
    if last_only:
        turns = turns[-1:]
    spans = []
    for i in turns:
        before = render_chat(tokenizer, conversation[:i], generation_prompt=True)
        upto = render_chat(tokenizer, conversation[: i + 1])
        if not (upto.startswith(before) and text.startswith(upto)):
            raise TrainingError(
                f"the chat template does not render message {i} as a continuation of the "
                "messages before it, so the answer's tokens cannot be located; use a model "
                "whose template is prefix-stable or train on single-turn rows"
            )
        spans.append((len(before), len(upto)))
    return text, spans


def template_prefix_tokens(tokenizer: Any, system_prompt: str | None = None) -> int:
    """Tokens the template spends before the first answer of an empty one-turn chat."""
    messages = [{"role": "user", "content": ""}]
    if system_prompt:
        messages.insert(0, {"role": "system", "content": system_prompt})
    text = render_chat(tokenizer, messages, generation_prompt=True)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def token_labels(tokenizer: Any, text: str, spans: list[tuple[int, int]]) -> Example:
    """`text` tokenised, with a label on every token whose characters overlap a span."""
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = enc["input_ids"]
        # a token carries the loss if its characters overlap an answer span
        labels = [
            tok
            if any(start < span_end and end > span_start for span_start, span_end in spans)
            else IGNORE
            for tok, (start, end) in zip(ids, enc["offset_mapping"], strict=True)
        ]
        return Example(ids, labels)
    # slow tokenizers have no offsets: tokenise the pieces between span edges separately
    ids, labels, pos = [], [], 0
    for s0, e in [*spans, (len(text), len(text))]:
        for piece, train in ((text[pos:s0], False), (text[s0:e], True)):
            if piece:
                part = tokenizer(piece, add_special_tokens=False)["input_ids"]
                ids += part
                labels += part if train else [IGNORE] * len(part)
        pos = e
    return Example(ids, labels)


def tokenize_conversations(
    tokenizer: Any,
    conversations: list[Conversation],
    max_length: int,
    last_only: bool = False,
    progress: bool = True,
) -> Tokenized:
    """SFT examples; rows whose every answer token falls past `max_length` are dropped."""
    from tuneloop.progress import Progress

    out = Tokenized(examples=[], kept=[])
    bar = Progress(len(conversations), "tokenizing", "row") if progress else None
    for i, conv in enumerate(conversations):
        text, spans = assistant_spans(tokenizer, conv, last_only)
        ex = token_labels(tokenizer, text, spans)
        cut = len(ex.input_ids) > max_length
        if cut:
            out.truncated += 1
            ex = Example(ex.input_ids[:max_length], ex.labels[:max_length])
        if bar:
            bar.update(1)
        # position 0 is never predicted, so a target there does not count
        if not any(x != IGNORE for x in ex.labels[1:]):
            out.dropped["answer cut off entirely by max_length" if cut else "no answer tokens"] += 1
            continue
        out.examples.append(ex)
        out.kept.append(i)
    if bar:
        bar.close()
    return out


def pack_documents(tokenizer: Any, texts: list[str], block_size: int) -> Tokenized:
    """Documents joined by EOS and cut into full blocks; the ragged tail is dropped."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise TrainingError("the tokenizer has no end-of-sequence token to separate documents")
    stream: list[int] = []
    for text in texts:
        stream += tokenizer(text, add_special_tokens=False)["input_ids"]
        stream.append(eos)
    blocks = len(stream) // block_size
    out = Tokenized(examples=[], kept=[])
    for b in range(blocks):
        ids = stream[b * block_size : (b + 1) * block_size]
        out.examples.append(Example(ids, list(ids)))
        out.kept.append(b)
    tail = len(stream) - blocks * block_size
    if tail:
        out.dropped[f"last {tail} tokens (less than one block)"] += 1
    return out


def pack_examples(examples: list[Example], capacity: int) -> tuple[list[Example], float]:
    """Examples laid end to end in rows of at most `capacity` tokens; returns the rows and
    the fraction of row space that holds tokens (before padding to the batch).

    Best-fit decreasing: longest first, each into the row whose free space fits it most
    tightly, so rows come out nearly full. Positions restart at 0 for every example and
    each example's first token carries no label, so a packed row computes exactly the
    loss of its examples padded separately (a test checks loss and gradients); the
    model's mask comes from the positions (see `loop.collate`). Deterministic.
    """
    import bisect

    order = sorted(range(len(examples)), key=lambda i: (-len(examples[i].input_ids), i))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free tokens, row), sorted
    for i in order:
        n = len(examples[i].input_ids)
        at = bisect.bisect_left(free, (n, -1))
        if at == len(free):
            rows.append([i])
            if capacity - n > 0:
                bisect.insort(free, (capacity - n, len(rows) - 1))
            continue
        room, r = free.pop(at)
        rows[r].append(i)
        if room - n > 0:
            bisect.insort(free, (room - n, r))
    packed = []
    for row in rows:
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for i in row:
            e = examples[i]
            ids += e.input_ids
            labels += [IGNORE, *e.labels[1:]]
            positions += range(len(e.input_ids))
        packed.append(Example(ids, labels, positions))
    total = sum(len(e.input_ids) for e in examples)
    return packed, total / max(1, capacity * len(rows))
