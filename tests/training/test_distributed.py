"""Two CPU processes (DDP over gloo, launched by `tuneloop train --nproc 2`) compute what
one process computes with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tuneloop import registry

from conftest import SUPPORT


def _write_recipe(
    path: Path, tiny_model: Path, batch_size: int, name: str = "ddp", **training: object
) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "name": f"{name}-b{batch_size}",
                "model": str(tiny_model),
                "data": {"train": str(SUPPORT / "train.jsonl"), "max_length": 96},
                "adapter": {"r": 4, "alpha": 8},
                "training": {
                    "precision": "fp32",  # an exact (1e-4) comparison
                    "max_steps": 3,
                    "batch_size": batch_size,
                    "logging_steps": 1,
                    "learning_rate": 1e-3,
                    "group_by_length": False,
                    **training,
                },
                "output_dir": str(path.parent / "runs"),
            }
        )
    )
    return path


def _tuneloop(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TUNELOOP_NO_PROGRESS="1")
    return subprocess.run(
        [sys.executable, "-m", "tuneloop.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def _losses(run_id: int) -> list[float]:
    return [e["loss"] for e in registry.run_metrics(run_id) if "loss" in e]


def _assert_same_losses(run_a: int, run_b: int, steps: int) -> None:
    a, b = _losses(run_a), _losses(run_b)
    assert len(a) == len(b) == steps
    for x, y in zip(a, b, strict=True):
        assert y == pytest.approx(x, rel=1e-4)


@pytest.mark.skipif(sys.platform != "linux", reason="gloo process groups are tested on Linux")
def test_two_processes_match_one_with_the_same_global_batch(
    tiny_model: Path, tmp_path: Path
) -> None:
    one = _tuneloop("train", str(_write_recipe(tmp_path / "one.yaml", tiny_model, 8)))
    assert one.returncode == 0, one.stderr[-2000:]
    two = _tuneloop(
        "train", str(_write_recipe(tmp_path / "two.yaml", tiny_model, 4)), "--nproc", "2"
    )
    assert two.returncode == 0, two.stderr[-3000:]
    runs = {r.name: r for r in registry.list_runs()}
    assert set(runs) == {"ddp-b8", "ddp-b4"}  # one record for the two workers
    single, double = runs["ddp-b8"], runs["ddp-b4"]
    assert double.status == "completed"
    _assert_same_losses(single.id, double.id, steps=3)
    # both saw the same number of tokens per step
    assert double.metrics["train_tokens"] == single.metrics["train_tokens"]
    lines = (Path(double.run_dir) / "metrics.jsonl").read_text().splitlines()
    assert len([json.loads(x) for x in lines]) == 3  # written once, by rank 0
    assert (Path(double.run_dir) / "model" / "adapter_model.safetensors").is_file()


@pytest.mark.skipif(sys.platform != "linux", reason="gloo process groups are tested on Linux")
@pytest.mark.parametrize("distributed", ["fsdp", "zero2", "zero3"])
def test_sharded_two_processes_match_one_and_save_a_plain_model(
    tiny_model: Path, tmp_path: Path, distributed: str
) -> None:
    """FSDP2 and DeepSpeed ZeRO shard over 2 processes (ZeRO-2: optimizer state and
    gradients; FSDP and ZeRO-3: the weights too); the losses, the gathered checkpoint and
    the saved adapter all equal the 1-process run with the same global batch."""
    from safetensors.torch import load_file

    extra = {"eval_steps": 1, "save_total_limit": 5}  # checkpoints gathered at every step
    data = {"validation_split": 0.25}
    one = _write_recipe(tmp_path / "one.yaml", tiny_model, 8, "single", **extra)
    two = _write_recipe(
        tmp_path / "two.yaml", tiny_model, 4, distributed, distributed=distributed, **extra
    )
    for path in (one, two):
        recipe = yaml.safe_load(path.read_text())
        recipe["data"].update(data)
        path.write_text(yaml.safe_dump(recipe))
    done = _tuneloop("train", str(one))
    assert done.returncode == 0, done.stderr[-2000:]
    done = _tuneloop("train", str(two), "--nproc", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    runs = {r.name: r for r in registry.list_runs()}
    single, sharded = runs["single-b8"], runs[f"{distributed}-b4"]
    assert sharded.status == "completed"
    _assert_same_losses(single.id, sharded.id, steps=3)
    import torch

    def weights(run_dir: str, where: str) -> dict[str, torch.Tensor]:
        path = Path(run_dir) / where
        return load_file(path) if path.suffix == ".safetensors" else torch.load(path)

    state = json.loads((Path(sharded.run_dir) / "checkpoints/step-000002/state.json").read_text())
    assert state["layout"] == distributed  # the sharded path really ran
    for where in ("checkpoints/step-000002/weights.pt", "model/adapter_model.safetensors"):
        wa, wb = weights(single.run_dir, where), weights(sharded.run_dir, where)
        assert wa.keys() == wb.keys() and wa, where
        for name in wa:
            assert (wa[name] - wb[name]).abs().max() <= 1e-4 * (wa[name].abs().max() + 1e-3)


def _jsonl_losses(run_dir: str) -> dict[int, float]:
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return {e["step"]: e["loss"] for e in map(json.loads, lines) if "loss" in e}


@pytest.mark.skipif(sys.platform != "linux", reason="gloo process groups are tested on Linux")
@pytest.mark.parametrize("distributed", ["ddp", "fsdp", "zero2", "zero3"])
def test_two_process_run_resumes_exactly(
    tiny_model: Path, tmp_path: Path, distributed: str
) -> None:
    """`--resume --nproc 2` from step 3 repeats steps 4-6 of the uninterrupted 2-process run
    (dropout on, so every process's random stream must be restored); resuming with another
    process count is refused."""
    path = _write_recipe(
        tmp_path / "r.yaml", tiny_model, 4, f"resume-{distributed}",
        max_steps=6, save_steps=1, save_total_limit=10, distributed=distributed,
    )  # fmt: skip
    recipe = yaml.safe_load(path.read_text())
    recipe["adapter"]["dropout"] = 0.1
    path.write_text(yaml.safe_dump(recipe))
    done = _tuneloop("train", str(path), "--nproc", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = registry.list_runs()
    before = _jsonl_losses(run.run_dir)
    assert sorted(before) == [1, 2, 3, 4, 5, 6]

    ckpt = str(Path(run.run_dir) / "checkpoints" / "step-000003")
    single = _tuneloop("train", "--resume", run.run_dir, "--from", ckpt)
    assert single.returncode != 0
    assert "2-process run" in single.stderr and "--nproc 2" in single.stderr

    again = _tuneloop("train", "--resume", run.run_dir, "--from", ckpt, "--nproc", "2")
    assert again.returncode == 0, again.stderr[-3000:]
    after = _jsonl_losses(run.run_dir)
    assert sorted(after) == [1, 2, 3, 4, 5, 6]
    for step in (4, 5, 6):
        assert after[step] == pytest.approx(before[step], rel=1e-4), step
    assert registry.get_run(run.id).status == "completed"


@pytest.mark.skipif(sys.platform != "linux", reason="gloo process groups are tested on Linux")
def test_zero_run_stops_on_a_non_finite_loss_and_saves_nothing(
    tiny_model: Path, tmp_path: Path
) -> None:
    """Under ZeRO the loop still checks the loss before DeepSpeed's update: an absurd
    learning rate blows the weights up after step 1, and step 2 stops the run."""
    path = _write_recipe(
        tmp_path / "nan.yaml", tiny_model, 4, "nan", distributed="zero2",
        learning_rate=1e30, warmup_ratio=0.0, save_steps=1,
    )  # fmt: skip
    done = _tuneloop("train", str(path), "--nproc", "2")
    assert done.returncode != 0
    assert "became" in done.stderr and "at step 2" in done.stderr, done.stderr[-3000:]
    (run,) = registry.list_runs()
    assert run.status == "failed"
    run_dir = Path(run.run_dir)
    assert not (run_dir / "model").exists()
    saved = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert saved == ["step-000001"]  # written before the weights went bad, nothing after


def test_zero_without_deepspeed_is_a_clear_error_before_any_process_starts(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tuneloop.config.load import load_recipe
    from tuneloop.errors import TrainingError
    from tuneloop.training.launch import launch

    path = _write_recipe(tmp_path / "z.yaml", tiny_model, 4, "z", distributed="zero3")
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # `import deepspeed` now fails
    with pytest.raises(TrainingError, match="pip install deepspeed"):
        launch(load_recipe(path), str(path), [], 2)
    assert registry.list_runs() == []  # no run record was created


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(sys.platform != "linux", reason="gloo process groups are tested on Linux")
def test_two_nodes_started_by_torchrun_train_one_run(tiny_model: Path, tmp_path: Path) -> None:
    """The documented multi-node command, with two "nodes" on this machine (one process
    each): torchrun starts the workers itself, rank 0 creates the run and shares it through
    the rendezvous store, and the result equals one process with the same global batch."""
    one = _tuneloop("train", str(_write_recipe(tmp_path / "one.yaml", tiny_model, 8)))
    assert one.returncode == 0, one.stderr[-2000:]
    recipe = _write_recipe(tmp_path / "nodes.yaml", tiny_model, 4, "nodes")
    endpoint = f"127.0.0.1:{_free_port()}"
    env = dict(os.environ, TUNELOOP_NO_PROGRESS="1", OMP_NUM_THREADS="1")

    def command(rank: int) -> list[str]:
        return [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
            "--node_rank", str(rank), "--nproc_per_node", "1", "--rdzv_endpoint", endpoint,
            "-m", "tuneloop.cli", "train", str(recipe),
        ]  # fmt: skip

    nodes = [
        subprocess.Popen(
            command(rank), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    assert all(node.returncode == 0 for node in nodes), outputs[0][-2000:] + outputs[1][-2000:]
    runs = {r.name: r for r in registry.list_runs()}
    assert set(runs) == {"ddp-b8", "nodes-b4"}  # one record for both nodes
    assert runs["nodes-b4"].status == "completed"
    _assert_same_losses(runs["ddp-b8"].id, runs["nodes-b4"].id, steps=3)
