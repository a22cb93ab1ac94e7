"""`tuneloop train RECIPE --nproc N`: the same run in N processes (DDP; FSDP2 sharding with
`training.distributed: fsdp`; DeepSpeed ZeRO with `zero1`/`zero2`/`zero3`; see
train/loop.py and train/zero.py).

The launcher creates the run record and directory, then starts N workers with
`torch.distributed.run` (torchrun). Each worker runs the ordinary training code; the
process group (gloo on CPU, NCCL on GPUs) comes from the environment torchrun sets, through
`accelerate`. Each optimizer step uses `batch_size x N` examples split across the workers,
so N processes compute what one process computes with the same global batch. Only rank 0
writes files and registry records.

Multi-node: run torchrun yourself on every node with the same rendezvous settings; rank 0
creates the run and shares it through torchrun's rendezvous store (common._shared_run),
e.g. on node 0 of 2:

    torchrun --nnodes 2 --node_rank 0 --nproc_per_node 8 --rdzv_endpoint host:29500 \
        -m tuneloop.cli train recipe.yaml
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tuneloop.config import Recipe
from tuneloop.errors import TrainingError
from tuneloop.training import zero

LAUNCHED_RUN = "TUNELOOP_LAUNCHED_RUN"
LAUNCHED_RUN_DIR = "TUNELOOP_LAUNCHED_RUN_DIR"


def launch(
    recipe: Recipe,
    recipe_path: str,
    overrides: list[str],
    nproc: int,
    resume_dir: str | None = None,
    from_checkpoint: str | None = None,
) -> int:
    """Run `recipe` in `nproc` processes; returns the run id. Raises if any worker fails.

    resume_dir: continue that run (from its latest checkpoint, or `from_checkpoint`); every
    worker loads the checkpoint, which must come from a run with the same `nproc`.
    """
    import json

    from tuneloop import registry
    from tuneloop.training import common

    if nproc < 2:
        raise TrainingError("--nproc needs at least 2 processes")
    common.check_runtime(recipe)
    if zero.stage_of(recipe.training.distributed):
        zero.require_deepspeed()  # before any process starts
    if resume_dir:
        meta = Path(resume_dir) / "run.json"
        if not meta.is_file():
            raise TrainingError(f"{resume_dir} is not a run directory (no run.json)")
        run = registry.get_run(json.loads(meta.read_text(encoding="utf-8"))["run_id"])
        run_path = Path(resume_dir)
        registry.update_run(run.id, status="running", error=None)
        worker_args = ["--resume", str(run_path)]
        if from_checkpoint:
            worker_args += ["--from", from_checkpoint]
    else:
        run, run_path = common.start_run(recipe, {}, "", None)
        worker_args = [str(Path(recipe_path))]
    env = dict(os.environ)
    env[LAUNCHED_RUN] = str(run.id)
    env[LAUNCHED_RUN_DIR] = str(run_path)
    # share the cores: N workers each with every core would oversubscribe the CPU
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={nproc}", "-m", "tuneloop.cli", "train",
        *worker_args, *overrides,
    ]  # fmt: skip
    done = subprocess.run(command, env=env, check=False)
    if done.returncode != 0:
        if registry.get_run(run.id).status == "running":
            registry.update_run(
                run.id, status="failed", error=f"a worker exited with {done.returncode}"
            )
        raise TrainingError(
            f"run {run.id}: {nproc}-process training failed (exit {done.returncode}); the "
            "workers' errors are above"
        )
    return run.id
