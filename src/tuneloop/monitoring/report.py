"""`tuneloop monitor`: what production traffic looked like, and whether it has drifted.

Reads the traffic table (every request `tuneloop serve` logged, from any number of
replicas), and writes `OUT/monitor.json` and a self-contained `OUT/monitor.html`:

- volume, error rate, latency percentiles, answer length and refusal rate, per served
  model and per time bucket (hourly, daily past three days);
- drift of recent prompts against the reference prompts (the served run's training and
  eval data, or files given), by the tests in `monitoring/drift.py`, with an alert line;
- the uncovered prompts, each with its nearest reference examples: candidates for the
  next eval suite and dataset (`tuneloop traffic export --uncovered`).
"""

from __future__ import annotations

import base64
import re
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

REFUSAL = re.compile(
    r"^\s*(i'?m sorry|i am sorry|sorry, (but )?i|i can(no|')t|i cannot|i'?m (not able|unable)|"
    r"i am (not able|unable)|as an ai)",
    re.IGNORECASE,
)
ERROR_FROM = 400  # statuses counted as errors (499, a client that left, is counted apart)


def parse_since(since: str) -> timedelta:
    """'24h', '7d', '30m', '90s' -> a timedelta."""
    from tuneloop.errors import TuneloopError

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", since)
    if not m:
        raise TuneloopError(f"--since {since!r}: use a number and s, m, h or d (e.g. 24h, 7d)")
    unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[m.group(2)]
    return timedelta(**{unit: float(m.group(1))})


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    import numpy as np

    return float(np.percentile(values, q))


def prompt_text(messages: list[dict[str, Any]]) -> str:
    """The last user message: what a request is about."""
    for m in reversed(messages or []):
        if m.get("role") == "user":
            return str(m.get("content", ""))
    return ""


def summarise(records: list[Any]) -> dict[str, Any]:
    """Volume, errors, latency, answer length and refusals of a list of traffic rows."""
    answered = [r for r in records if r.status == 200]
    errors = [r for r in records if r.status >= ERROR_FROM and r.status != 499]
    latencies = [r.latency_s for r in answered]
    words = [len(a.split()) for r in answered for a in r.answers]
    refusals = sum(1 for r in answered for a in r.answers if REFUSAL.match(a or ""))
    answers = sum(len(r.answers) for r in answered)
    statuses: dict[str, int] = defaultdict(int)
    for r in records:
        statuses[str(r.status)] += 1
    return {
        "requests": len(records),
        "answered": len(answered),
        "error_rate": len(errors) / len(records) if records else 0.0,
        "disconnected": sum(1 for r in records if r.status == 499),
        "statuses": dict(sorted(statuses.items())),
        "latency_p50": _pct(latencies, 50),
        "latency_p95": _pct(latencies, 95),
        "latency_p99": _pct(latencies, 99),
        "ttft_p50": _pct([r.ttft_s for r in answered if r.ttft_s is not None], 50),
        "answer_words_mean": sum(words) / len(words) if words else None,
        "refusal_rate": refusals / answers if answers else 0.0,
        "prompt_tokens": sum(r.prompt_tokens for r in records),
        "completion_tokens": sum(r.completion_tokens for r in records),
    }


def timeline(records: list[Any]) -> tuple[str, list[dict[str, Any]]]:
    """Per-bucket summaries (hourly, or daily when the span passes three days)."""
    if not records:
        return "hour", []
    span = records[-1].created_at - records[0].created_at
    unit = "day" if span > timedelta(days=3) else "hour"

    def bucket(t: datetime) -> datetime:
        return (
            t.replace(minute=0, second=0, microsecond=0)
            if unit == "hour"
            else t.replace(hour=0, minute=0, second=0, microsecond=0)
        )

    groups: dict[datetime, list[Any]] = defaultdict(list)
    for r in records:
        groups[bucket(r.created_at)].append(r)
    return unit, [
        {"start": start.isoformat(), **summarise(rows)} for start, rows in sorted(groups.items())
    ]


def reference_prompts(files: list[str], runs: list[int]) -> list[str]:
    """User prompts of the reference data: given files, and the datasets the runs trained
    and were evaluated on (each read once, from its stored path or else its source file,
    where one still exists)."""
    from tuneloop.data.readers import read_conversations
    from tuneloop.errors import DataError

    paths = list(files)
    for run_id in runs:
        paths += _run_dataset_files(run_id)
    texts: list[str] = []
    for path in dict.fromkeys(paths):
        try:
            loaded = read_conversations(path)
        except DataError:
            continue
        texts += [prompt_text(c[:-1]) for c in loaded.conversations]
    return [t for t in texts if t]


def _run_dataset_files(run_id: int) -> list[str]:
    from sqlalchemy import select

    from tuneloop.registry.db import session_scope
    from tuneloop.registry.tables import Dataset, RunDataset

    with session_scope() as s:
        rows = s.execute(
            select(Dataset.path, Dataset.source)
            .join(RunDataset, RunDataset.dataset_id == Dataset.id)
            .where(RunDataset.run_id == run_id)
        ).all()
    found = (next((p for p in pair if p and Path(p).is_file()), None) for pair in rows)
    return [p for p in found if p]


def build(
    since: str = "24h",
    model: str | None = None,
    reference: list[str] | None = None,
    recent: str | None = None,
    alpha: float = 0.01,
    min_auc: float = 0.6,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The monitoring report as a dict (see the module docstring).

    since: the window reported; recent: the window tested for drift (default: the same).
    reference: data files of reference prompts; default the datasets of the runs served.
    """
    from tuneloop import registry
    from tuneloop.data.embed import embed
    from tuneloop.monitoring.drift import drift_test, uncovered
    from tuneloop.registry.tables import utcnow

    now = now or utcnow()
    start = now - parse_since(since)
    records = registry.list_traffic(since=start, model=model)
    by_model: dict[str, list[Any]] = defaultdict(list)
    for r in records:
        by_model[f"{r.model} ({r.served_by})"].append(r)
    unit, buckets = timeline(records)
    report: dict[str, Any] = {
        "window": {"since": start.isoformat(), "until": now.isoformat(), "model": model},
        "overall": summarise(records),
        "by_model": {k: summarise(v) for k, v in sorted(by_model.items())},
        "bucket": unit,
        "timeline": buckets,
        "drift": None,
        "uncovered": [],
    }
    runs = sorted(
        {int(r.served_by.split(":")[1]) for r in records if re.fullmatch(r"run:\d+", r.served_by)}
    )
    ref_texts = reference_prompts(reference or [], [] if reference else runs)
    cut = now - parse_since(recent) if recent else start
    recent_rows = [(r.request_id, prompt_text(r.messages)) for r in records if r.created_at >= cut]
    recent_rows = [(rid, t) for rid, t in recent_rows if t]
    recent_texts = [t for _, t in recent_rows]
    report["reference"] = {
        "files": reference or [],
        "runs": [] if reference else runs,
        "prompts": len(ref_texts),
    }
    if len(ref_texts) >= 2 and len(recent_texts) >= 2:
        ref_vec, new_vec = embed(ref_texts), embed(recent_texts)
        result = drift_test(ref_vec, new_vec, alpha=alpha, min_auc=min_auc)
        report["drift"] = {**result.to_dict(), "line": result.line()}
        found, threshold = uncovered(ref_texts, ref_vec, recent_texts, new_vec)
        report["uncovered_threshold"] = threshold
        report["uncovered"] = [
            {**u.to_dict(), "request_id": recent_rows[u.index][0]} for u in found
        ]
    else:
        report["drift_skipped"] = (
            f"drift needs at least 2 reference and 2 recent prompts; have {len(ref_texts)} "
            f"reference (pass --reference FILE) and {len(recent_texts)} recent"
        )
    return report


def timeline_png(report: dict[str, Any]) -> bytes | None:
    buckets = report["timeline"]
    if not buckets:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tuneloop.evaluation.report import figure_png

    xs = [b["start"][5:16].replace("T", " ") for b in buckets]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3), dpi=100)
    axes[0].bar(xs, [b["requests"] for b in buckets])
    axes[0].set_title(f"requests per {report['bucket']}")
    axes[1].plot(xs, [b["latency_p50"] or 0 for b in buckets], marker="o", label="p50")
    axes[1].plot(xs, [b["latency_p95"] or 0 for b in buckets], marker="o", label="p95")
    axes[1].set_title("latency (s)")
    axes[1].legend()
    axes[2].plot(xs, [b["error_rate"] for b in buckets], marker="o", label="errors")
    axes[2].plot(xs, [b["refusal_rate"] for b in buckets], marker="o", label="refusals")
    axes[2].set_title("rates")
    axes[2].legend()
    for ax in axes:
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
        ax.grid(alpha=0.3)
    return figure_png(fig)


def write(report: dict[str, Any], out: str | Path) -> Path:
    """OUT/monitor.json and OUT/monitor.html (atomic writes)."""
    from tuneloop.evaluation.report import render_template
    from tuneloop.files import atomic_write_json, atomic_write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "monitor.json", report)
    png = timeline_png(report)
    html = render_template(
        "monitor.html",
        report=report,
        plot=base64.b64encode(png).decode() if png else None,
    )
    atomic_write_text(out / "monitor.html", html)
    return out / "monitor.html"
