"""GGUF files for llama.cpp and Ollama: writing one from a transformers model, reading it back.

Written with the `gguf` package (llama.cpp's own Python library) for the architectures
whose layout we check here by loading the file back with transformers' GGUF loader and
comparing logits: Llama-shaped models (`llama`, `mistral`: llama.cpp stores their query and
key rows interleaved per rotary pair, so those two matrices are permuted on the way out) and
`qwen2` (stored as is, with its attention biases). Other architectures are refused with the
list of supported ones rather than written with a guessed layout.

The tokenizer goes in as llama.cpp's `gpt2` (byte-level BPE) vocabulary: tokens, merges and
token types, with the pre-tokenizer named the way llama.cpp and transformers both know it.
A tokenizer whose splitting we cannot name is refused: a file that tokenises differently
from training answers differently, and nothing at load time would say so.

An Ollama `Modelfile` needs the chat template in Go's template language, not Jinja. The
template is derived from the model's own (rendered with marker contents, cut at the
markers), written out, and rendered back by a small interpreter of the constructs we emit
(`render_go_template`), so the export's parity check compares what Ollama will render,
not what we meant it to render.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop.errors import ModelError

QUANTS = ("f16", "q8_0")

# transformers model_type -> (GGUF architecture, query/key rows permuted for llama.cpp's rope)
ARCHITECTURES = {"llama": ("llama", True), "mistral": ("llama", True), "qwen2": ("qwen2", False)}

# pre-tokenizer names both llama.cpp and transformers' GGUF loader know, most common first
_PRE_NAMES = ("llama-bpe", "qwen2", "gpt-4o")


def _require_gguf() -> Any:
    try:
        import gguf
    except ImportError as exc:  # pragma: no cover - a dependency; guards a broken install
        raise ModelError("GGUF export needs the `gguf` package: pip install gguf") from exc
    return gguf


# --- the vocabulary ----------------------------------------------------------------------


@dataclass
class Vocabulary:
    """A byte-level BPE tokenizer as GGUF stores it."""

    tokens: list[str]
    types: list[int]  # gguf.TokenType values
    merges: list[str]
    pre: str
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None
    unk_id: int | None


def vocabulary(tokenizer: Any, rows: int) -> Vocabulary:
    """The tokenizer's vocabulary padded to the embedding's `rows`; ModelError for a
    tokenizer GGUF's `gpt2` model cannot hold as is."""
    gguf = _require_gguf()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ModelError("GGUF export needs a fast (tokenizers) tokenizer")
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or not _byte_level(spec.get("decoder")):
        raise ModelError(
            "GGUF export supports byte-level BPE tokenizers (GPT-2, Llama 3, Qwen2, SmolLM "
            f"style); this one is {model.get('type')!r}"
        )
    if spec.get("normalizer") not in (None, {"type": "NFC"}):
        raise ModelError(
            "the tokenizer normalises text before splitting it "
            f"({spec['normalizer'].get('type')}), which llama.cpp would not do"
        )
    pre = pre_tokenizer_name(spec.get("pre_tokenizer"))
    by_id: dict[int, str] = {int(i): t for t, i in model["vocab"].items()}
    types = {i: int(gguf.TokenType.NORMAL) for i in by_id}
    for added in spec.get("added_tokens") or []:
        by_id[int(added["id"])] = added["content"]
        kind = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
        types[int(added["id"])] = int(kind)
    size = max(rows, max(by_id) + 1)
    if size > rows:
        raise ModelError(f"the tokenizer has ids up to {size - 1} but the embedding {rows} rows")
    tokens, kinds = [], []
    for i in range(size):
        if i in by_id:
            tokens.append(by_id[i])
            kinds.append(types[i])
        else:  # embedding rows past the vocabulary (padded for speed): never produced
            tokens.append(f"[PAD{i}]")
            kinds.append(int(gguf.TokenType.UNUSED))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]

    def special(name: str) -> int | None:
        value = getattr(tokenizer, name, None)
        return int(value) if isinstance(value, int) else None

    return Vocabulary(
        tokens,
        kinds,
        merges,
        pre,
        special("bos_token_id"),
        special("eos_token_id"),
        special("pad_token_id"),
        special("unk_token_id"),
    )


def _byte_level(decoder: Any) -> bool:
    if not isinstance(decoder, dict):
        return False
    if decoder.get("type") == "ByteLevel":
        return True
    return any(_byte_level(d) for d in decoder.get("decoders") or [])


def pre_tokenizer_name(pre: Any) -> str:
    """llama.cpp's name for how this tokenizer splits text before merging: `gpt-2` for plain
    byte-level splitting, else the name whose split pattern equals the tokenizer's."""
    if isinstance(pre, dict) and pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    pattern = None
    if isinstance(pre, dict) and pre.get("type") == "Sequence":
        parts = pre.get("pretokenizers") or []
        splits = [p for p in parts if p.get("type") == "Split"]
        byte = [p for p in parts if p.get("type") == "ByteLevel"]
        if len(splits) == 1 and len(byte) == 1 and not byte[0].get("use_regex", True):
            pattern = (splits[0].get("pattern") or {}).get("Regex")
    if pattern is not None:
        try:
            from transformers.integrations.gguf.gguf_tokenizer_mapping import (
                GGUF_PRE_TOKENIZER_SPLITS,
            )
        except ImportError:  # pragma: no cover - older transformers
            GGUF_PRE_TOKENIZER_SPLITS = {}
        for name in _PRE_NAMES:
            if GGUF_PRE_TOKENIZER_SPLITS.get(name) == pattern:
                return name
    raise ModelError(
        "cannot name this tokenizer's pre-tokenizer for llama.cpp (known: gpt2, "
        f"{', '.join(_PRE_NAMES)}); a GGUF with the wrong one would tokenise differently"
    )


# --- the file ----------------------------------------------------------------------------


def write_gguf(
    model: Any,
    tokenizer: Any,
    path: str | Path,
    *,
    quant: str = "f16",
    name: str = "model",
    chat_template: str | None = None,
) -> dict[str, Any]:
    """Write `model` (a transformers causal LM, adapters merged) and its tokenizer to `path`.

    Matrices are stored as `quant` (f16, or q8_0 where a row divides into 32-value blocks,
    else f16); norms and biases as f32. Returns what was written (architecture, tensor
    counts by type, bytes). The caller writes to a temporary path and renames it.
    """
    import numpy as np

    gguf = _require_gguf()
    if quant not in QUANTS:
        raise ModelError(f"quant must be one of {', '.join(QUANTS)}, not {quant!r}")
    config = model.config
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ModelError(
            f"GGUF export supports {', '.join(sorted(ARCHITECTURES))} models, not {model_type!r}"
        )
    arch, permute = ARCHITECTURES[model_type]
    rope = _rope_theta(config)
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    state = model.state_dict()
    tied = bool(getattr(config, "tie_word_embeddings", False))
    rows = int(state["model.embed_tokens.weight"].shape[0])
    vocab = vocabulary(tokenizer, rows)

    arch_id = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    names = gguf.get_tensor_name_map(arch_id, int(config.num_hidden_layers))
    qtype = gguf.GGMLQuantizationType.Q8_0 if quant == "q8_0" else gguf.GGMLQuantizationType.F16
    ftype = gguf.LlamaFileType.MOSTLY_Q8_0 if quant == "q8_0" else gguf.LlamaFileType.MOSTLY_F16

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    if head_dim * heads != int(config.hidden_size):
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_rope_freq_base(rope)
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(rows)
    writer.add_file_type(int(ftype))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_merges(vocab.merges)
    for add, value in (
        (writer.add_bos_token_id, vocab.bos_id),
        (writer.add_eos_token_id, vocab.eos_id),
        (writer.add_pad_token_id, vocab.pad_id),
        (writer.add_unk_token_id, vocab.unk_id),
    ):
        if value is not None:
            add(value)
    writer.add_add_bos_token(False)  # the chat template writes every special token itself
    template = chat_template or getattr(tokenizer, "chat_template", None)
    if template:
        writer.add_chat_template(template)

    counts: dict[str, int] = {}
    for key, tensor in state.items():
        if key == "lm_head.weight" and tied:
            continue  # llama.cpp reuses the token embedding when `output.weight` is absent
        full = names.get_name(key, try_suffixes=(".weight", ".bias"))  # suffix kept
        if full is None:
            raise ModelError(f"no GGUF name for tensor {key!r} of a {model_type} model")
        data = tensor.detach().to("cpu").float().numpy()
        if permute and full.endswith(("attn_q.weight", "attn_k.weight")):
            data = _interleave_rope(data, heads if ".attn_q." in full else kv_heads)
        if data.ndim == 1:
            writer.add_tensor(full, data.astype(np.float32))
            kind = "f32"
        elif qtype == gguf.GGMLQuantizationType.Q8_0 and data.shape[-1] % 32 == 0:
            writer.add_tensor(full, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
            kind = "q8_0"
        else:
            half = data.astype(np.float16)
            if not np.isfinite(half).all():
                raise ModelError(f"tensor {key!r} has values beyond float16's range")
            writer.add_tensor(full, half)
            kind = "f16"
        counts[kind] = counts.get(kind, 0) + 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {
        "architecture": arch,
        "quant": quant,
        "tensors": counts,
        "vocabulary": len(vocab.tokens),
        "pre_tokenizer": vocab.pre,
        "bytes": Path(path).stat().st_size,
    }


def _rope_theta(config: Any) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    scaling = getattr(config, "rope_scaling", None) or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind != "default":
        raise ModelError(f"GGUF export does not write {kind!r} rope scaling yet")
    theta = params.get("rope_theta", getattr(config, "rope_theta", None))
    if theta is None:
        raise ModelError("the model config names no rope_theta")
    return float(theta)


def _interleave_rope(weight: Any, heads: int) -> Any:
    """Rows of a query/key projection reordered from transformers' rotate-half layout (each
    head's first half, then its second) to llama.cpp's pairs (row 0 with row d/2, ...)."""
    rows = weight.shape[0]
    half = rows // heads // 2
    return weight.reshape(heads, 2, half, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def load_gguf(path: str | Path) -> tuple[Any, Any]:
    """The model and tokenizer transformers' GGUF loader builds from `path` (float32)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return model.eval(), tokenizer


def compare_logits(reference: Any, candidate: Any, ids: list[int]) -> dict[str, float]:
    """How closely `candidate` reproduces `reference`'s next-token logits along `ids`: the
    largest and mean absolute difference, and the share of positions whose top token agrees."""
    import torch

    batch = torch.tensor([ids])
    with torch.no_grad():
        a = reference(input_ids=batch).logits[0].float()
        b = candidate(input_ids=batch).logits[0].float()
    diff = (a - b).abs()
    agree = (a.argmax(-1) == b.argmax(-1)).float().mean()
    return {
        "positions": len(ids),
        "max_abs_diff": round(float(diff.max()), 5),
        "mean_abs_diff": round(float(diff.mean()), 6),
        "logit_range": round(float(a.max() - a.min()), 3),
        "top1_agreement": round(float(agree), 4),
    }


# --- the chat template in Ollama's language ----------------------------------------------

_ROLES = ("system", "user", "assistant")


@dataclass
class TemplateParts:
    """A chat template cut into the literal text around each message."""

    preamble: str
    before: dict[str, str]  # role -> text before its content
    after: dict[str, str]  # role -> text after its content
    generation: str  # what opens the answer to generate
    default_system: str | None  # what the template says when the chat brings no system message


def template_parts(render: Any) -> TemplateParts:
    """Cut a chat template at marker contents. `render(messages, generation_prompt)` renders
    it. Raises ModelError for a template that does not render every message the same way
    whatever comes before it (then no fixed Go template can reproduce it)."""
    marks = {
        "system": "\x02S\x03",
        "user1": "\x02U1\x03",
        "assistant1": "\x02A1\x03",
        "user2": "\x02U2\x03",
        "assistant2": "\x02A2\x03",
    }
    chat = [
        {"role": "system", "content": marks["system"]},
        {"role": "user", "content": marks["user1"]},
        {"role": "assistant", "content": marks["assistant1"]},
        {"role": "user", "content": marks["user2"]},
        {"role": "assistant", "content": marks["assistant2"]},
    ]
    text = render(chat, False)
    pieces = re.split("|".join(re.escape(m) for m in marks.values()), text)
    if len(pieces) != 6:
        raise ModelError("the chat template does not render each message's content once")
    g0, g1, g2, g3, g4, g5 = pieces
    prompt = render(chat[:4], True)
    tail = prompt.split(marks["user2"], 1)[-1] if marks["user2"] in prompt else None
    if g2 != g4 or tail is None or not g3.startswith(g5):
        raise ModelError(
            "the chat template renders turns differently depending on what came before, "
            "which an Ollama template cannot express"
        )
    after = {"assistant": g5}
    before = {"user": g3[len(g5) :]}
    if not g1.endswith(before["user"]):
        raise ModelError("the chat template opens the first user turn differently")
    after["system"] = g1[: len(g1) - len(before["user"])]
    # user-then-assistant text (g2) and user-then-generation text (tail) share the user's
    # closing; what is left opens the assistant's turn
    closing = after["system"]  # most templates close every turn alike
    if closing and g2.startswith(closing) and tail.startswith(closing):
        shared = len(closing)
    else:
        shared = 0
        while shared < min(len(g2), len(tail)) and g2[shared] == tail[shared]:
            shared += 1
    after["user"] = g2[:shared]
    before["assistant"] = g2[shared:]
    generation = tail[shared:]
    preamble, before["system"], default = _start_of_chat(render, g0, before, after)
    return TemplateParts(preamble, before, after, generation, default)


def _start_of_chat(
    render: Any, g0: str, before: dict[str, str], after: dict[str, str]
) -> tuple[str, str, str | None]:
    """(preamble, system opening, default system message) from the text before the first
    message (`g0` = preamble + system opening) and a chat of one user message: that starts
    with the preamble alone, or, for a template that adds a system message of its own when
    the chat has none (SmolLM2 names itself), with that whole system turn."""
    marker = "\x02U\x03"
    alone = render([{"role": "user", "content": marker}], False).split(marker, 1)[0]
    if not alone.endswith(before["user"]):
        raise ModelError("the chat template opens a chat's first user turn differently")
    head = alone[: len(alone) - len(before["user"])]
    if g0.startswith(head):
        return head, g0[len(head) :], None
    closing = after["system"]
    if head.startswith(g0) and head.endswith(closing):
        return "", g0, head[len(g0) : len(head) - len(closing)]
    raise ModelError("the chat template starts a chat without a system message differently")


def _go_text(text: str) -> str:
    """Literal text for a Go template: `{{` must be written as an action."""
    return text.replace("{{", '{{ "{{" }}')


def ollama_template(parts: TemplateParts) -> str:
    """The Go template Ollama renders a chat with, built from `parts`."""
    branches = []
    for i, role in enumerate(_ROLES):
        keyword = "if" if i == 0 else "else if"
        branches.append(
            f'{{{{ {keyword} eq .Role "{role}" }}}}{_go_text(parts.before[role])}'
            f"{{{{ .Content }}}}{_go_text(parts.after[role])}"
        )
    body = "".join(branches) + "{{ end }}"
    return (
        f"{_go_text(parts.preamble)}{{{{ range .Messages }}}}{body}{{{{ end }}}}"
        f"{_go_text(parts.generation)}"
    )


_ACTION = re.compile(r"\{\{(.*?)\}\}", re.S)


def render_go_template(template: str, messages: list[dict[str, str]]) -> str:
    """Render the Go template constructs `ollama_template` writes (`range .Messages`,
    `if/else if eq .Role "x"`, `end`, `.Content`, `.Role`, quoted strings) as Go would.
    ModelError for anything else."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    for match in _ACTION.finditer(template):
        if match.start() > pos:
            tokens.append(("text", template[pos : match.start()]))
        tokens.append(("action", match.group(1).strip()))
        pos = match.end()
    if pos < len(template):
        tokens.append(("text", template[pos:]))

    def run(start: int, scope: dict[str, str] | None, out: list[str]) -> int:
        i = start
        while i < len(tokens):
            kind, value = tokens[i]
            if kind == "text":
                out.append(value)
            elif value == "end" or value.startswith("else"):
                return i
            elif value == "range .Messages":
                end = i
                for message in messages:
                    end = run(i + 1, message, out)
                if not messages:
                    end = run(i + 1, None, [])
                i = end  # at the range's `end`
            elif value.startswith("if "):
                i = _run_if(i, scope, out)
                continue
            elif value in (".Content", ".Role"):
                if scope is None:
                    raise ModelError(f"{{{{ {value} }}}} outside range")
                out.append(scope["content" if value == ".Content" else "role"])
            elif value.startswith('"') and value.endswith('"'):
                out.append(json.loads(value))
            else:
                raise ModelError(f"unsupported template action {{{{ {value} }}}}")
            i += 1
        return i

    def _run_if(i: int, scope: dict[str, str] | None, out: list[str]) -> int:
        taken = False
        condition = tokens[i][1]
        while True:
            wanted = re.fullmatch(r'(?:else )?if eq \.Role "(\w+)"', condition)
            if wanted is None:
                raise ModelError(f"unsupported condition {{{{ {condition} }}}}")
            hit = not taken and scope is not None and scope["role"] == wanted.group(1)
            i = run(i + 1, scope, out if hit else [])
            taken = taken or hit
            condition = tokens[i][1]
            if condition == "end":
                return i + 1
            if condition == "else":
                i = run(i + 1, scope, [] if taken else out)
                return i + 1

    out: list[str] = []
    end = run(0, None, out)
    if end != len(tokens):
        raise ModelError("unbalanced {{ end }} in the template")
    return "".join(out)


def modelfile(gguf_name: str, template: str, system: str | None, stops: list[str]) -> str:
    """An Ollama Modelfile for the GGUF beside it."""
    for label, text in (("template", template), ("system prompt", system or "")):
        if '"""' in text:
            raise ModelError(f'the {label} contains """, which a Modelfile cannot quote')
    lines = [
        "# Written by tuneloop export; `ollama create NAME -f Modelfile` in this folder.",
        f"FROM ./{gguf_name}",
        f'TEMPLATE """{template}"""',
    ]
    if system:
        lines.append(f'SYSTEM """{system}"""')
    lines += [f"PARAMETER stop {json.dumps(s)}" for s in stops]
    return "\n".join(lines) + "\n"
