"""The studio's pages over the rest of tuneloop, through tuneloop.api: runs with their loss
curve, datasets with their rows, evaluations per example and side by side, and a training
job started, streamed and cancelled from the browser's routes."""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from tuneloop import api, feedback, registry
from tuneloop.studio.app import create_app

from conftest import serving_in_thread, studio_login, write_jsonl

EVIL = "<script>alert(1)</script>"


def _recipe(tiny_model: Path, tmp_path: Path, steps: int) -> dict:
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"say {w} {EVIL}"},
                {"role": "assistant", "content": w},
            ]
        }
        for w in ("apple", "river", "stone", "cloud")
    ]
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    return {
        "name": "studio-page",
        "model": str(tiny_model),
        "data": {"train": str(data), "max_length": 64, "validation_split": 0.25},
        "adapter": {"type": "lora", "r": 4, "alpha": 8},
        "training": {"max_steps": steps, "batch_size": 2, "logging_steps": 1, "eval_steps": 1},
        "output_dir": str(tmp_path / "runs"),
    }


def test_runs_datasets_and_evaluations(tmp_path: Path, tiny_model: Path) -> None:
    _, password = feedback.ensure_admin()
    (_, viewer_pw) = feedback.create_user("vera", "viewer")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(tiny_model, tmp_path, steps=3)))
    run = api.train(recipe)
    prompts = [[{"role": "user", "content": f"q{i} {EVIL}"}] for i in range(2)]
    a = registry.add_eval(
        "base",
        {"rouge_l": 0.1},
        [{"prompt": p, "reference": "ref", "prediction": f"base {EVIL}"} for p in prompts],
        run_id=run.id,
    )
    b = registry.add_eval(
        "tuned",
        {"rouge_l": 0.3},
        [{"prompt": p, "reference": "ref", "prediction": "tuned"} for p in prompts],
        run_id=run.id,
    )
    other = registry.add_eval("x", {}, [{"prompt": prompts[0], "reference": "", "prediction": ""}])
    with serving_in_thread(create_app(jobs_root=tmp_path / "jobs")) as url:
        s, _ = studio_login(url, "vera", viewer_pw)  # a viewer reads all of these
        listing = s.get(url + "/runs").text
        assert f'href="/runs/{run.id}"' in listing and "studio-page" in listing
        page = s.get(f"{url}/runs/{run.id}").text
        assert 'id="loss-curve"' in page and "<polyline" in page
        assert "validation loss" in page  # validation entries are drawn too
        assert f"/evals/{a.id}/vs/{b.id}" in page
        dataset_id = api.get_run(run.id).datasets[0]["id"]
        rows = s.get(f"{url}/datasets/{dataset_id}").text
        assert "say apple" in rows and EVIL not in rows and "&lt;script&gt;" in rows
        assert s.get(url + "/datasets").status_code == 200
        side = s.get(f"{url}/evals/{a.id}/vs/{b.id}").text
        assert "base &lt;script&gt;" in side and "tuned" in side and EVIL not in side
        assert s.get(f"{url}/evals/{a.id}/vs/{other.id}").status_code == 400
        assert s.get(f"{url}/evals/{a.id}").status_code == 200
        for missing in ("/runs/999", "/datasets/999", "/evals/999"):
            assert s.get(url + missing).status_code == 404, missing
        assert s.get(url + "/jobs").status_code == 403  # jobs are for admins
        s2, _ = studio_login(url, "admin", password)
        assert s2.get(url + "/jobs").status_code == 200


def test_a_training_job_streams_its_log_and_cancels_into_a_resumable_run(
    tmp_path: Path, tiny_model: Path
) -> None:
    _, password = feedback.ensure_admin()
    recipe = yaml.safe_dump(_recipe(tiny_model, tmp_path, steps=100_000))
    with serving_in_thread(create_app(jobs_root=tmp_path / "jobs")) as url:
        s, csrf = studio_login(url, "admin", password)
        bad = s.post(url + "/jobs", data={"csrf": csrf, "kind": "train", "recipe": "a: [b"})
        assert bad.status_code == 400 and "not valid YAML" in bad.text
        r = s.post(
            url + "/jobs",
            data={"csrf": csrf, "kind": "train", "recipe": recipe},
            allow_redirects=False,
        )
        assert r.status_code == 303
        job = int(r.headers["location"].rsplit("/", 1)[1])
        assert "job-log" in s.get(f"{url}/jobs/{job}").text
        deadline = time.time() + 240
        while time.time() < deadline:  # until the run has logged a training step
            runs = [r for r in api.runs() if r.status == "running"]
            if runs and api.run_history(runs[0].id):
                break
            assert s.get(f"{url}/api/jobs/{job}/log").json()["status"] == "running"
            time.sleep(0.5)
        assert runs and api.run_history(runs[0].id), "the job's run never logged a step"
        assert s.post(f"{url}/jobs/{job}/cancel", data={"x": "1"}).status_code == 403
        s.post(f"{url}/jobs/{job}/cancel", data={"csrf": csrf})
        text, offset = "", 0
        while True:  # stream the log as the page does, from the last byte read
            out = s.get(f"{url}/api/jobs/{job}/log", params={"offset": offset}).json()
            text, offset = text + out["text"], out["offset"]
            if out["status"] != "cancelling" and not out["text"]:
                break
            assert time.time() < deadline + 120, text
            time.sleep(0.5)
        assert out["status"] == "cancelled", out
        assert "SIGTERM received: saved checkpoint" in text and "--resume" in text, text
    assert api.get_run(runs[0].id).status == "interrupted"  # resumable with --resume
