"""Background jobs the studio starts: `tuneloop train RECIPE` or `tuneloop eval SUITE
--model ...`, the same commands a shell runs, as child processes with their output in a
log file that the job page streams.

The recipe or suite an admin pastes is written to the job's folder
(`$TUNELOOP_HOME/studio/jobs/N/`), never to a path the browser names. Cancel sends
SIGTERM to the job's process group: training saves a checkpoint and its run is
`interrupted`, so `tuneloop train --resume run:ID` continues it. Jobs live in the studio
process: a restart forgets the list (the runs they made stay in the registry).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tuneloop.errors import NotFound, TuneloopError

KINDS = ("train", "eval")
MAX_RECIPE = 200_000
KILL_AFTER_S = 60.0  # a job still running this long after SIGTERM gets SIGKILL


@dataclass
class Job:
    id: int
    kind: str
    by: str
    folder: Path
    command: list[str]
    started: float = field(default_factory=time.time)
    ended: float | None = None
    returncode: int | None = None
    cancelled: bool = False
    process: Any = None

    @property
    def status(self) -> str:
        if self.returncode is None:
            return "cancelling" if self.cancelled else "running"
        if self.returncode == 0:  # finished on its own (a cancel that came too late)
            return "completed"
        return "cancelled" if self.cancelled else f"failed (exit {self.returncode})"

    @property
    def log(self) -> Path:
        return self.folder / "log.txt"

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "by": self.by,
            "status": self.status,
            "command": " ".join(self.command[2:]),
            "started": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.started)),
            "seconds": round((self.ended or time.time()) - self.started, 1),
        }


class Jobs:
    """The studio's jobs, newest first."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._jobs: dict[int, Job] = {}
        self._lock = threading.Lock()

    def start(self, kind: str, text: str, by: str, models: list[str] | None = None) -> Job:
        """Start `kind` on the recipe (train) or suite (eval) `text`; checked as YAML first
        so a typo is a clear error, not a failed job."""
        if kind not in KINDS:
            raise TuneloopError(f"job kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if not text.strip() or len(text) > MAX_RECIPE:
            raise TuneloopError(f"paste a YAML {'recipe' if kind == 'train' else 'suite'}")
        try:
            parsed = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise TuneloopError(f"not valid YAML: {err}") from None
        if not isinstance(parsed, dict):
            raise TuneloopError("the YAML must be a mapping of settings")
        if kind == "eval" and not models:
            raise TuneloopError("an eval job needs at least one model")
        with self._lock:
            job_id = max(self._jobs, default=0) + 1
            folder = self.root / str(job_id)
            while folder.exists():  # a folder left by an earlier studio process
                job_id += 1
                folder = self.root / str(job_id)
            folder.mkdir(parents=True)
            name = "recipe.yaml" if kind == "train" else "suite.yaml"
            (folder / name).write_text(text, encoding="utf-8")
            command = [sys.executable, "-m", "tuneloop.cli", kind, str(folder / name)]
            for m in models or []:
                command += ["--model", m]
            if kind == "eval":
                command += ["--out", str(folder / "report")]
            job = Job(job_id, kind, by, folder, command)
            env = {**os.environ, "TUNELOOP_NO_PROGRESS": "1", "PYTHONUNBUFFERED": "1"}
            with job.log.open("wb") as log:
                try:
                    job.process = subprocess.Popen(
                        command,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        cwd=folder,
                        env=env,
                        start_new_session=True,  # its own process group: cancel reaches all
                    )
                except OSError as err:
                    raise TuneloopError(f"could not start the job: {err}") from None
            self._jobs[job_id] = job
        threading.Thread(target=self._wait, args=(job,), daemon=True).start()
        return job

    def _wait(self, job: Job) -> None:
        job.returncode = job.process.wait()
        job.ended = time.time()

    def get(self, job_id: int) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id} in this studio process")
        return job

    def list(self) -> list[Job]:
        return sorted(self._jobs.values(), key=lambda j: -j.id)

    def _signal(self, job: Job, sig: int) -> None:
        # only while the child is unreaped: its pid (= its group id) cannot be reused yet
        if job.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(job.process.pid, sig)

    def cancel(self, job_id: int) -> Job:
        """SIGTERM to the job's process group (training checkpoints and stops); SIGKILL
        if it is still running KILL_AFTER_S later."""
        job = self.get(job_id)
        if job.returncode is None and not job.cancelled:
            job.cancelled = True
            self._signal(job, signal.SIGTERM)
            timer = threading.Timer(KILL_AFTER_S, self._signal, args=(job, signal.SIGKILL))
            timer.daemon = True
            timer.start()
        return job

    def read_log(self, job_id: int, offset: int = 0, limit: int = 65536) -> tuple[str, int]:
        """Log text from byte `offset` (at most `limit` bytes) and the next offset."""
        job = self.get(job_id)
        with job.log.open("rb") as fh:
            fh.seek(max(0, offset))
            data = fh.read(limit)
        if len(data) == limit:  # stop before a character cut in two; the rest comes next
            for cut in range(len(data), max(len(data) - 4, 0), -1):
                try:
                    data[:cut].decode("utf-8")
                except UnicodeDecodeError:
                    continue
                data = data[:cut]
                break
        return data.decode("utf-8", "replace"), max(0, offset) + len(data)

    def stop_all(self, wait_s: float = KILL_AFTER_S) -> None:
        """SIGTERM every running job, wait for them (checkpoints take a moment), then
        SIGKILL what is left: no job outlives the studio."""
        running = [j for j in self._jobs.values() if j.returncode is None]
        for job in running:
            job.cancelled = True
            self._signal(job, signal.SIGTERM)
        deadline = time.time() + wait_s
        for job in running:
            try:
                job.process.wait(timeout=max(0.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                self._signal(job, signal.SIGKILL)
