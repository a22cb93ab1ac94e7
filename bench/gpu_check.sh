#!/usr/bin/env bash
# The GPU paths in one prepared run, for a session that is lent a GPU machine (device tool):
#   bash bench/gpu_check.sh 2>&1 | tee gpu_check.log
# Budget: about 11 minutes on one H100/H200 after setup. Each step prints what it checks;
# record the output in docs/experiments.md. On a machine without CUDA it says so and stops.
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TUNELOOP_NO_PROGRESS=1
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
    echo "gpu_check: no CUDA device here; nothing to check"; exit 0; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
pip install -q -e ".[test]" bitsandbytes >/dev/null && tuneloop models pull >/dev/null
step() { echo; echo "== $1"; shift; timeout "$@"; echo "-- exit $?"; }
# 1. QLoRA: NF4 base with double quantisation, only LoRA trains, the loss falls, a PEFT adapter
step "QLoRA test (bitsandbytes 4-bit)" 300 python -m pytest -q -x tests -k qlora
# 2. bf16 LoRA SFT on the bundled model, 30 steps, then its checkpoint resumes
OUT=$(mktemp -d)
step "bf16 LoRA SFT, 30 steps" 300 tuneloop train examples/support/recipe.yaml \
    training.max_steps=30 training.precision=bf16 "output_dir=$OUT"
# 3. tuneloop vs TRL on the same SFT work (tokens/s ratio, peak memory)
step "bench_sft on GPU (LoRA)" 300 python bench/bench_sft.py --steps 30 --batch-size 16
step "bench_generate on GPU" 300 python bench/bench_generate.py
# 4. vLLM generation, where it is installed (optional; tuneloop falls back to transformers)
python -c "import vllm" 2>/dev/null && echo "vllm $(python -c 'import vllm; print(vllm.__version__)') present" \
    || echo "vllm not installed: skipped"
# 5. serving on the GPU: continuous batching vs one request at a time, 16 clients
step "bench_serve on GPU" 300 python bench/bench_serve.py --clients 16 --requests 64 --max-tokens 64
# 6. forgetting: 40 steps with self-distilled replay and the L2 pull (both run on CUDA)
step "replay + l2_to_base, 40 steps" 300 tuneloop train examples/support/recipe.yaml \
    training.max_steps=40 training.replay.ratio=0.2 training.l2_to_base=0.001 "output_dir=$OUT"
