"""`tuneloop traffic export`: selected production traffic becomes a dataset version.

- `uncovered`: prompts far from every reference example (monitoring/drift.py), as prompt rows
  (the conversation up to the user's last message): for an eval suite after labelling, for
  the studio, for `compare --data`.
- `downvoted`: prompts whose answer got a thumbs down, with the answer and the comment kept
  in each row's `meta`: what to fix next.
- `corrected`: prompts with the corrected answer a user sent, as SFT rows (the conversation
  plus the correction as the assistant turn): training data for the next round.

The file is written atomically and registered as a dataset version whose `meta` lists the
request ids it came from (lineage back to the traffic table) and the selection.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop.errors import TuneloopError
from tuneloop.results import Serializable

KINDS = ("uncovered", "downvoted", "corrected")


@dataclass
class TrafficExport(Serializable):
    kind: str
    path: str
    rows: int
    dataset_id: int
    request_ids: list[str]


def export_traffic(
    kind: str,
    out: str | Path,
    since: str = "7d",
    model: str | None = None,
    reference: list[str] | None = None,
) -> TrafficExport:
    """Write the selected traffic to `out` (JSONL) and register it (see module docstring)."""
    from tuneloop import registry
    from tuneloop.files import atomic_write_jsonl
    from tuneloop.monitoring.report import build, parse_since
    from tuneloop.registry.tables import utcnow

    if kind not in KINDS:
        raise TuneloopError(f"export kind must be one of {', '.join(KINDS)}, got {kind!r}")
    start = utcnow() - parse_since(since)
    records = registry.list_traffic(since=start, model=model)
    by_id = {r.request_id: r for r in records}
    rows: list[dict[str, Any]] = []
    ids: list[str] = []
    if kind == "uncovered":
        report = build(since=since, model=model, reference=reference)
        if report["drift"] is None:
            raise TuneloopError(f"no uncovered prompts can be found: {report['drift_skipped']}")
        for u in report["uncovered"]:
            r = by_id[u["request_id"]]
            ids.append(r.request_id)
            rows.append(
                {
                    "prompt": r.messages,
                    "meta": {
                        "request_id": r.request_id,
                        "similarity": round(u["similarity"], 4),
                        "nearest": [t for t, _ in u["neighbours"]],
                        "answer": r.answers[0] if r.answers else "",
                    },
                }
            )
    else:
        for fb in registry.feedback_for(list(by_id)):
            r = by_id[fb.request_id]
            if kind == "downvoted" and fb.rating == -1:
                ids.append(r.request_id)
                rows.append(
                    {
                        "prompt": r.messages,
                        "meta": {
                            "request_id": r.request_id,
                            "answer": r.answers[0] if r.answers else "",
                            "comment": fb.comment,
                        },
                    }
                )
            elif kind == "corrected" and fb.correction:
                ids.append(r.request_id)
                rows.append(
                    {
                        "messages": [
                            *r.messages,
                            {"role": "assistant", "content": fb.correction},
                        ],
                        "meta": {
                            "request_id": r.request_id,
                            "answer": r.answers[0] if r.answers else "",
                        },
                    }
                )
    if not rows:
        raise TuneloopError(
            f"no {kind} traffic in the last {since}"
            + (f" for model {model!r}" if model else "")
            + ": nothing written"
        )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_jsonl(out, rows)
    dataset = registry.register_dataset(
        out.stem,
        rows,
        str(out.resolve()),
        "chat" if kind == "corrected" else "prompt",
        meta={"traffic": {"kind": kind, "since": since, "model": model, "request_ids": ids}},
    )
    return TrafficExport(kind, str(out), len(rows), dataset.id, ids)
