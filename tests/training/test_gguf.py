"""`tuneloop export --gguf`: a GGUF that transformers' own GGUF loader reads back to the same
logits and tokens, an Ollama Modelfile whose Go template renders like the training
template, and an export that refuses, writing nothing, when a check fails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tuneloop.config import recipe_from_dict
from tuneloop.errors import ModelError
from tuneloop.files import MARKER
from tuneloop.models import gguf as gg
from tuneloop.training import train

from conftest import SUPPORT, run_cli

SYSTEM = "You are Brightwave's support assistant. Answer in one or two sentences."


def _train(model: Path, tmp_path: Path, system: str | None = SYSTEM) -> int:
    data = {"train": str(SUPPORT / "train.jsonl"), "max_length": 64}
    if system:
        data["system_prompt"] = system
    recipe = recipe_from_dict(
        {
            "name": "support-tiny",
            "model": str(model),
            "data": data,
            "adapter": {"type": "lora", "r": 4, "alpha": 8},
            "training": {"max_steps": 2, "batch_size": 2, "learning_rate": 1e-2},
            "output_dir": str(tmp_path / "runs"),
        }
    )
    return train(recipe).run_id


def _greedy(model: object, ids: list[int], n: int = 8) -> list[int]:
    with torch.no_grad():
        out = model.generate(  # type: ignore[attr-defined]
            torch.tensor([ids]), max_new_tokens=n, do_sample=False, pad_token_id=2
        )
    return out[0, len(ids) :].tolist()


def test_gguf_export_reads_back_to_the_same_model(tiny_model: Path, tmp_path: Path) -> None:
    import gguf
    from transformers import AutoTokenizer

    from tuneloop.models.resolve import load_model, resolve

    run_id = _train(tiny_model, tmp_path)
    out = tmp_path / "exported"
    proc = run_cli("export", f"run:{run_id}", "--out", str(out), "--gguf", "--no-merged")
    assert proc.returncode == 0, proc.stderr
    assert "gguf parity: templates and" in proc.stdout
    folder = out / "gguf"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["support-tiny-f16.gguf", "Modelfile", "parity.json", "README.md", MARKER]
    )
    parity = json.loads((folder / "parity.json").read_text())
    assert parity["checks"]["logits"]["top1_agreement"] == 1.0
    assert parity["system"] == SYSTEM and parity["stops"] == ["<|im_end|>"]

    # the metadata llama.cpp reads
    reader = gguf.GGUFReader(str(folder / "support-tiny-f16.gguf"))
    fields = {name: reader.get_field(name) for name in reader.fields}

    def value(name: str) -> object:
        return fields[name].contents()

    assert value("general.architecture") == "llama"
    assert value("tokenizer.ggml.model") == "gpt2" and value("tokenizer.ggml.pre") == "gpt-2"
    assert value("tokenizer.ggml.eos_token_id") == 2
    assert "<|im_start|>" in value("tokenizer.chat_template")
    assert "output.weight" not in {t.name for t in reader.tensors}  # tied embedding

    # independently of the export's own check: transformers' loader reads the file back to a
    # model that continues the conversation token for token as the merged run does
    merged = load_model(resolve(f"run:{run_id}"), dtype=torch.float32, merge=True).eval()
    loaded, loaded_tok = gg.load_gguf(folder / "support-tiny-f16.gguf")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    chat = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Refund?"}]
    text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert loaded_tok(text, add_special_tokens=False)["input_ids"] == ids
    assert _greedy(loaded, ids) == _greedy(merged, ids)

    # the Modelfile: the run's system prompt, the stop token, a template rendering as trained
    modelfile = (folder / "Modelfile").read_text()
    assert "FROM ./support-tiny-f16.gguf\n" in modelfile
    assert f'SYSTEM """{SYSTEM}"""' in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    template = modelfile.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    assert gg.render_go_template(template, chat) == text
    card = (folder / "README.md").read_text()
    assert "library_name: gguf" in card


def test_q8_0_is_smaller_and_close(tiny_model: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    f16 = gg.write_gguf(model, tokenizer, tmp_path / "a.gguf", quant="f16")
    q8 = gg.write_gguf(model, tokenizer, tmp_path / "b.gguf", quant="q8_0")
    assert q8["tensors"]["q8_0"] == f16["tensors"]["f16"] and q8["bytes"] < 0.7 * f16["bytes"]
    loaded, _ = gg.load_gguf(tmp_path / "b.gguf")
    ids = tokenizer("Where is my order? It has been two weeks.")["input_ids"]
    close = gg.compare_logits(model, loaded, ids)
    assert 0 < close["max_abs_diff"] < 0.05 * close["logit_range"]


def test_qwen2_layout_with_attention_biases(bundled_model_dir: Path, tmp_path: Path) -> None:
    """qwen2 keeps its query/key rows as they are and stores the attention biases."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(bundled_model_dir)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():  # biases are zero at init: make them matter
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    info = gg.write_gguf(model, tokenizer, tmp_path / "q.gguf", quant="f16")
    assert info["architecture"] == "qwen2"
    loaded, _ = gg.load_gguf(tmp_path / "q.gguf")
    ids = tokenizer("How long does a refund take?")["input_ids"]
    close = gg.compare_logits(model, loaded, ids)
    assert close["top1_agreement"] == 1.0 and close["max_abs_diff"] < 0.01 * close["logit_range"]


def _jinja(template: str):
    from jinja2 import Environment

    compiled = Environment(keep_trailing_newline=True).from_string(template)
    return lambda messages, generation: compiled.render(
        messages=messages, add_generation_prompt=generation, bos_token="<s>"
    )


LLAMA3_LIKE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>"
    "\n\n{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
NUMBERED = (  # each turn carries its number: no fixed Go template renders that
    "{% for m in messages %}<{{ m['role'] }} {{ loop.index }}>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def test_go_template_renders_like_the_jinja_one() -> None:
    render = _jinja(LLAMA3_LIKE)
    parts = gg.template_parts(render)
    assert parts.preamble == "<s>" and parts.default_system is None
    template = gg.ollama_template(parts)
    chats = [
        [{"role": "system", "content": "S"}, {"role": "user", "content": "a {{ b }} c"}],
        [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "one"},
            {"role": "assistant", "content": "two\n"},
            {"role": "user", "content": "three"},
        ],
    ]
    for chat in chats:
        assert gg.render_go_template(template, chat) == render(chat, True)
    with pytest.raises(ModelError, match="differently"):
        gg.template_parts(_jinja(NUMBERED))
    with pytest.raises(ModelError, match="unsupported template action"):
        gg.render_go_template("{{ .Prompt }}", [])


NO_STOP = (  # answers end with a newline only: a model trained on it never emits its end token
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_a_template_without_an_end_token_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    import shutil

    model = tmp_path / "nostop"
    shutil.copytree(tiny_model, model)
    (model / "chat_template.jinja").write_text(NO_STOP)
    run_id = _train(model, tmp_path, system=None)
    out = tmp_path / "exported"
    proc = run_cli("export", f"run:{run_id}", "--out", str(out), "--gguf", "--no-merged")
    assert proc.returncode != 0 and "would not stop" in proc.stderr
    assert not (out / "gguf").exists()  # nothing half-written
    assert (out / "adapter" / "adapter_config.json").is_file()  # the adapter went first


def test_a_system_prompt_shared_by_every_row_is_the_runs(tiny_model: Path, tmp_path: Path) -> None:
    """The support rows all open with one system message: requests that bring none (to the
    server, or to an exported GGUF through its Modelfile) get it, not the template's
    default, which the run never saw in training."""
    from tuneloop.data.prompting import Prompting
    from tuneloop.models.resolve import resolve

    first = json.loads((SUPPORT / "train.jsonl").read_text().splitlines()[0])
    shared = first["messages"][0]["content"]
    run_id = _train(tiny_model, tmp_path, system=None)
    prompting = Prompting.of(resolve(f"run:{run_id}"))
    assert prompting.system_prompt == shared
    (chat,) = prompting.prepare([[{"role": "user", "content": "Refund?"}]])
    assert chat[0] == {"role": "system", "content": shared}
