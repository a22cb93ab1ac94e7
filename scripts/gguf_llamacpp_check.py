"""Check an exported GGUF in llama.cpp itself: same prompt tokens, same greedy answer.

The export's own parity check reads the GGUF back with transformers' loader; this one runs
llama.cpp (the prebuilt CPU build in the npm package node-llama-cpp), which is what
Ollama and llama-server run. Not part of CI: it needs those binaries.

    mkdir -p /tmp/nlc && (cd /tmp/nlc && npm install node-llama-cpp@3.22.1 --ignore-scripts)
    python scripts/gguf_llamacpp_check.py exported/gguf/support-lora-f16.gguf run:2 \\
        --node-modules /tmp/nlc/node_modules

For each prompt it prints whether llama.cpp tokenised the rendered prompt to the same ids
as transformers, how many answer tokens agree from the start, and whether llama.cpp
stopped at the end token where transformers did. Exit 1 if any prompt differs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

PROMPTS = [
    "Do you ship to Germany?",
    "How long does a refund take?",
    "My order #12345678 arrived damaged —  what now?\n\n  (naïve café, $99.95!!)",
    "Can I change the address on an order I placed an hour ago?",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("gguf", type=Path)
    parser.add_argument("model", help="the run or folder the GGUF was exported from")
    parser.add_argument("--node-modules", type=Path, required=True)
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args()

    import torch

    from tuneloop.data.prompting import Prompting
    from tuneloop.models.resolve import load_model, load_tokenizer, resolve

    resolved = resolve(args.model)
    model = load_model(resolved, dtype=torch.float32, merge=True).eval()
    tokenizer = load_tokenizer(resolved.adapter or resolved.base, resolved)
    prompting = Prompting.of(resolved)
    script = Path(__file__).with_suffix(".mjs")
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        # ES modules resolve `import` from the script's folder, not NODE_PATH: run a copy
        # beside node_modules
        runner = args.node_modules.parent / ".gguf_llamacpp_check.mjs"
        runner.write_text(script.read_text(encoding="utf-8"), encoding="utf-8")
        for text in PROMPTS:
            (chat,) = prompting.prepare([[{"role": "user", "content": text}]])
            rendered = tokenizer.apply_chat_template(
                chat, tokenize=False, add_generation_prompt=True
            )
            ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                out = model.generate(
                    torch.tensor([ids]),
                    max_new_tokens=args.max_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                )
            reference = out[0, len(ids) :].tolist()
            prompt_file = Path(tmp) / "prompt.txt"
            prompt_file.write_text(rendered, encoding="utf-8")
            proc = subprocess.run(
                ["node", str(runner), str(args.gguf), str(prompt_file), str(args.max_tokens)],
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                print(proc.stderr[-2000:], file=sys.stderr)
                return 2
            got = json.loads(proc.stdout.strip().splitlines()[-1])
            hf_stopped = bool(reference) and reference[-1] == tokenizer.eos_token_id
            if hf_stopped:  # llama.cpp ends at the end token without handing it out
                reference = reference[:-1]
            # llama.cpp stopped on its own if it ended before the budget
            got["stopped"] = got["stopped"] or len(got["answer"]) < args.max_tokens
            agree = sum(1 for _ in _common_prefix(reference, got["answer"]))
            same = (
                got["prompt"] == ids
                and agree == len(reference) == len(got["answer"])
                and hf_stopped == got["stopped"]
            )
            failures += not same
            print(
                json.dumps(
                    {
                        "prompt": text,
                        "prompt_tokens": len(ids),
                        "prompt_ids_equal": got["prompt"] == ids,
                        "answer_tokens": [len(reference), len(got["answer"])],
                        "agree_from_start": agree,
                        "stopped": [hf_stopped, got["stopped"]],
                        "answer": tokenizer.decode(got["answer"], skip_special_tokens=True),
                    },
                    ensure_ascii=False,
                )
            )
        runner.unlink(missing_ok=True)
    return 1 if failures else 0


def _common_prefix(a: list[int], b: list[int]):
    for x, y in zip(a, b, strict=False):
        if x != y:
            return
        yield x


if __name__ == "__main__":
    sys.exit(main())
