"""What a task's responses add up to: agreement, disagreements, exports, a leaderboard.

- `task_agreement`: per criterion (rate), per flag, the choice (compare) or the ranks
  (rank), the agreement statistics of `evaluation/agreement.py` over submitted responses.
- `disagreements` lists the items where annotators differ; an admin `resolve`s one with a
  final label, which then wins over the votes in every export.
- `export_task` turns the responses into a dataset version with lineage to the task:
  `preference` pairs (chosen, rejected, margin), `kto` unpaired labels, `sft` corrections.
- `human_leaderboard`: compare and rank votes as games of the same Bradley-Terry / Elo
  leaderboard the LLM judge's verdicts feed (`evaluation/ranking.py`).
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.errors import Forbidden, NotFound, TuneloopError
from tuneloop.feedback.accounts import User
from tuneloop.feedback.audit import record
from tuneloop.results import Serializable

EXPORT_KINDS = ("preference", "kto", "sft")
GOOD, BAD = 4.0, 2.0  # a rated answer is desirable at a mean score >= 4, undesirable <= 2
MIN_GAP = 0.5  # two rated answers make a pair when their mean scores differ this much


@dataclass
class FeedbackExport(Serializable):
    task_id: int
    kind: str
    path: str
    rows: int
    dataset_id: int
    dataset_version: int
    items: list[int] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)


def _load(task_id: int) -> tuple[Any, list[Any], dict[int, list[Any]]]:
    """(task, items, item id -> submitted responses)."""
    from sqlalchemy import select

    from tuneloop import registry
    from tuneloop.registry.tables import FeedbackItem, FeedbackResponse, FeedbackTask

    with registry.session_scope() as s:
        task = s.get(FeedbackTask, task_id)
        if task is None:
            raise NotFound(f"no feedback task {task_id}")
        items = list(
            s.scalars(
                select(FeedbackItem)
                .where(FeedbackItem.task_id == task_id)
                .order_by(FeedbackItem.position)
            )
        )
        responses: dict[int, list[Any]] = defaultdict(list)
        for r in s.scalars(
            select(FeedbackResponse)
            .where(FeedbackResponse.task_id == task_id, FeedbackResponse.status == "submitted")
            .order_by(FeedbackResponse.id)
        ):
            responses[r.item_id].append(r)
        return task, items, responses


def _mean_score(ratings: dict[str, int]) -> float | None:
    return sum(ratings.values()) / len(ratings) if ratings else None


def task_agreement(task_id: int) -> dict[str, Any]:
    """Agreement between annotators on one task, per criterion (see module docstring)."""
    from tuneloop.evaluation.agreement import agreement

    task, items, responses = _load(task_id)
    series: dict[str, tuple[dict[Any, dict[str, Any]], str]] = {}
    for item in items:
        for r in responses.get(item.id, []):
            v = r.value
            if task.kind == "rate":
                for j, given in enumerate(v.get("ratings", [])):
                    for criterion, score in given.items():
                        series.setdefault(criterion, ({}, "ordinal"))[0].setdefault(
                            (item.id, j), {}
                        )[r.annotator] = score
                for j, marked in enumerate(v.get("flags", [])):
                    for flag in task.config.get("flags", []):
                        series.setdefault(f"flag:{flag}", ({}, "nominal"))[0].setdefault(
                            (item.id, j), {}
                        )[r.annotator] = flag in marked
            elif task.kind == "compare" and "winner" in v:
                series.setdefault("choice", ({}, "nominal"))[0].setdefault(item.id, {})[
                    r.annotator
                ] = str(v["winner"])
            elif task.kind == "rank" and "ranking" in v:
                for place, j in enumerate(v["ranking"]):
                    series.setdefault("rank", ({}, "ordinal"))[0].setdefault((item.id, j), {})[
                        r.annotator
                    ] = place
            elif task.kind == "correct":
                edited = v.get("correction", "").strip() != item.answers[0]["text"].strip()
                series.setdefault("edited", ({}, "nominal"))[0].setdefault(item.id, {})[
                    r.annotator
                ] = edited
    return {name: agreement(labels, level) for name, (labels, level) in series.items()}


def _verdict(task: Any, item: Any, responses: list[Any]) -> dict[str, Any] | None:
    """The item's outcome in item indices: the admin's resolution, else the votes.
    compare: {"winner", "votes"}; rank: {"mean_place"}; rate: {"mean_score"} per answer;
    correct: {"correction"}. None without a submitted response."""
    if item.resolution is not None:
        resolved = dict(item.resolution)
        resolved["resolved"] = True
        if "mean_score" in resolved:  # JSON keeps the answer indices as strings
            resolved["mean_score"] = {int(j): v for j, v in resolved["mean_score"].items()}
        if task.kind == "compare" and "winner" in resolved:
            resolved.setdefault("votes", {str(resolved["winner"]): 1})
        if task.kind == "rank" and "ranking" in resolved:
            resolved["mean_place"] = {j: p for p, j in enumerate(resolved["ranking"])}
        return resolved
    if not responses:
        return None
    values = [r.value for r in responses]
    if task.kind == "compare":
        votes = Counter(str(v["winner"]) for v in values if "winner" in v)
        top = votes.most_common()
        if not top:
            return None
        winner = top[0][0] if len(top) == 1 or top[0][1] > top[1][1] else "tie"
        return {"winner": int(winner) if winner.isdigit() else winner, "votes": dict(votes)}
    if task.kind == "rank":
        places: dict[int, list[int]] = defaultdict(list)
        for v in values:
            for p, j in enumerate(v.get("ranking", [])):
                places[j].append(p)
        return {"mean_place": {j: sum(p) / len(p) for j, p in places.items()}}
    if task.kind == "rate":
        scores: dict[int, list[float]] = defaultdict(list)
        for v in values:
            for j, given in enumerate(v.get("ratings", [])):
                m = _mean_score(given)
                if m is not None:
                    scores[j].append(m)
        return {"mean_score": {j: sum(s) / len(s) for j, s in scores.items()}}
    corrections = [v["correction"] for v in values if v.get("correction", "").strip()]
    return {"correction": corrections[0]} if corrections else None


def disagreements(task_id: int, user: User) -> list[dict[str, Any]]:
    """Items whose submitted responses differ (compare: different choices; rank: a
    different first place; rate: a criterion two or more points apart; correct: different
    corrections), with every response: admins only."""
    if user.role != "admin":
        raise Forbidden("only admins see other annotators' responses")
    task, items, responses = _load(task_id)
    out = []
    for item in items:
        rs = responses.get(item.id, [])
        if len(rs) < 2:
            continue
        values = [r.value for r in rs]
        if task.kind == "compare":
            split = len({str(v.get("winner")) for v in values}) > 1
        elif task.kind == "rank":
            split = len({(v.get("ranking") or [None])[0] for v in values}) > 1
        elif task.kind == "rate":
            split = False
            for j in range(len(item.answers)):
                for c in task.config.get("criteria", []):
                    got = [v["ratings"][j][c] for v in values if c in v["ratings"][j]]
                    split |= bool(got) and max(got) - min(got) >= 2
        else:
            split = len({v.get("correction", "").strip() for v in values}) > 1
        if split:
            out.append(
                {
                    "item_id": item.id,
                    "position": item.position,
                    "prompt": item.prompt,
                    "answers": item.answers,
                    "responses": [{"annotator": r.annotator, "value": r.value} for r in rs],
                    "resolution": item.resolution,
                }
            )
    return out


def resolve(task_id: int, item_id: int, value: dict[str, Any], user: User) -> dict[str, Any]:
    """An admin's final label for an item, in item indices: compare `{"winner": 0|1|"tie"|
    "both_bad"}`, rank `{"ranking": [...]}`, correct `{"correction": text}`, rate
    `{"mean_score": {answer: score}}`. Exports use it instead of the votes."""
    from tuneloop import registry
    from tuneloop.registry.tables import FeedbackItem, FeedbackTask

    if user.role != "admin":
        raise Forbidden("only admins resolve disagreements")
    with registry.session_scope() as s:
        task = s.get(FeedbackTask, task_id)
        item = s.get(FeedbackItem, item_id)
        if task is None or item is None or item.task_id != task_id:
            raise NotFound(f"task {task_id} has no item {item_id}")
        n = len(item.answers)
        ok = {
            "compare": lambda v: v.get("winner") in (0, 1, "tie", "both_bad"),
            "rank": lambda v: sorted(v.get("ranking", [])) == list(range(n)),
            "correct": lambda v: isinstance(v.get("correction"), str) and v["correction"].strip(),
            "rate": lambda v: isinstance(v.get("mean_score"), dict),
        }[task.kind]
        if not isinstance(value, dict) or not ok(value):
            raise TuneloopError(f"not a valid {task.kind} resolution: {value!r}")
        if task.kind == "rate":  # answer index -> a score on the task's scale
            low, high = task.config.get("scale", [1, 5])
            try:
                scores = {int(j): float(v) for j, v in value["mean_score"].items()}
            except (TypeError, ValueError):
                raise TuneloopError("mean_score maps answer indices to scores") from None
            if any(not 0 <= j < n or not low <= v <= high for j, v in scores.items()):
                raise TuneloopError(f"mean_score: answers 0-{n - 1}, scores {low}-{high}")
            value = {"mean_score": scores}
        record(
            s,
            user.name,
            "resolve",
            "item",
            item_id,
            {"resolution": item.resolution},
            {"resolution": value},
        )
        item.resolution = value
    return value


def _rows(task: Any, items: list[Any], responses: dict[int, list[Any]], kind: str):
    """(rows, item ids used, skipped counts) of one export kind."""
    rows: list[dict[str, Any]] = []
    used: list[int] = []
    skipped: Counter[str] = Counter()
    for item in items:
        verdict = _verdict(task, item, responses.get(item.id, []))
        if verdict is None:
            skipped["no response"] += 1
            continue
        texts = [a["text"] for a in item.answers]
        before = len(rows)
        if kind == "preference":
            rows += _pairs(task.kind, item.prompt, texts, verdict, skipped)
        elif kind == "kto":
            rows += _labels(task.kind, item.prompt, texts, verdict, skipped)
        elif task.kind == "correct" and verdict.get("correction"):
            rows.append(
                {
                    "messages": [
                        *item.prompt,
                        {"role": "assistant", "content": verdict["correction"]},
                    ]
                }
            )
        else:
            skipped["not a correction"] += 1
        if len(rows) > before:
            used.append(item.id)
    return rows, used, dict(skipped)


def _pairs(kind, prompt, texts, verdict, skipped) -> list[dict[str, Any]]:
    if kind == "compare":
        w = verdict.get("winner")
        if not isinstance(w, int):
            skipped[f"verdict {w}"] += 1
            return []
        votes = verdict.get("votes", {})
        total = sum(votes.values()) or 1
        margin = (votes.get(str(w), 1) - votes.get(str(1 - w), 0)) / total
        return [
            {
                "prompt": prompt,
                "chosen": texts[w],
                "rejected": texts[1 - w],
                "margin": round(margin, 4),
            }
        ]
    if kind == "rank":
        place = verdict["mean_place"]
        n = len(texts)
        out = []
        for i, j in itertools.combinations(sorted(place), 2):
            if place[i] == place[j]:
                skipped["tied places"] += 1
                continue
            hi, lo = (i, j) if place[i] < place[j] else (j, i)
            out.append(
                {
                    "prompt": prompt,
                    "chosen": texts[hi],
                    "rejected": texts[lo],
                    "margin": round((place[lo] - place[hi]) / max(n - 1, 1), 4),
                }
            )
        return out
    if kind == "rate":
        score = verdict.get("mean_score", {})
        out = []
        for i, j in itertools.combinations(sorted(score), 2):
            gap = score[i] - score[j]
            if abs(gap) < MIN_GAP:
                skipped["scores too close"] += 1
                continue
            hi, lo = (i, j) if gap > 0 else (j, i)
            out.append(
                {
                    "prompt": prompt,
                    "chosen": texts[hi],
                    "rejected": texts[lo],
                    "margin": round(abs(gap) / 4, 4),
                }
            )
        if len(texts) < 2:
            skipped["one answer"] += 1
        return out
    skipped[f"{kind} has no preferences"] += 1
    return []


def _labels(kind, prompt, texts, verdict, skipped) -> list[dict[str, Any]]:
    def row(j: int, good: bool) -> dict[str, Any]:
        return {"prompt": prompt, "completion": texts[j], "label": good}

    if kind == "rate":
        out = []
        for j, s in sorted(verdict.get("mean_score", {}).items()):
            if s >= GOOD or s <= BAD:
                out.append(row(j, s >= GOOD))
            else:
                skipped["middling score"] += 1
        return out
    if kind == "compare":
        w = verdict.get("winner")
        if isinstance(w, int):
            return [row(w, True), row(1 - w, False)]
        if w == "both_bad":
            return [row(0, False), row(1, False)]
        skipped["tie"] += 1
        return []
    if kind == "rank":
        place = verdict["mean_place"]
        best, worst = min(place, key=place.get), max(place, key=place.get)
        return [row(best, True), row(worst, False)] if best != worst else []
    skipped[f"{kind} has no labels"] += 1
    return []


def export_task(
    task_id: int,
    kind: str,
    out: str | Path | None = None,
    actor: str = "cli",
    force: bool = False,
) -> FeedbackExport:
    """Write a task's outcome as a JSONL file and register it as a dataset version whose
    meta names the task and the items it came from (lineage). `tuneloop train` takes it
    as `data.train: dataset:ID` (or the file): SFT from corrections, DPO/KTO/reward from
    preferences and labels. `out` defaults to `$TUNELOOP_HOME/studio/exports/`; an existing
    `out` is kept unless `force`."""
    from tuneloop import registry
    from tuneloop.config.home import tuneloop_home
    from tuneloop.files import atomic_write_jsonl

    if kind not in EXPORT_KINDS:
        raise TuneloopError(f"export kind must be one of {', '.join(EXPORT_KINDS)}, got {kind!r}")
    task, items, responses = _load(task_id)
    rows, used, skipped = _rows(task, items, responses, kind)
    if not rows:
        why = ", ".join(f"{n} {k}" for k, n in skipped.items()) or "no items"
        raise TuneloopError(f"task {task_id} gives no {kind} rows yet ({why})")
    digest = registry.content_hash(rows)
    path = (
        Path(out)
        if out
        else (tuneloop_home() / "studio" / "exports" / f"task{task_id}-{kind}-{digest[:12]}.jsonl")
    )
    if out and path.exists() and not force:
        raise TuneloopError(f"{path} exists; pass force=True (--force) to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_jsonl(path, rows)
    fmt = {"preference": "preference", "kto": "kto", "sft": "messages"}[kind]
    dataset = registry.register_dataset(
        f"studio-{task.name}-{kind}",
        rows,
        str(path),
        fmt,
        meta={
            "studio_task": task_id,
            "task": task.name,
            "task_kind": task.kind,
            "export": kind,
            "items": used,
            "skipped": skipped,
        },
        source=f"studio:task:{task_id}:{kind}",
    )
    with registry.session_scope() as s:
        record(
            s,
            actor,
            "export",
            "task",
            task_id,
            None,
            {"kind": kind, "dataset_id": dataset.id, "rows": len(rows), "path": str(path)},
        )
    return FeedbackExport(
        task_id=task_id,
        kind=kind,
        path=str(path),
        rows=len(rows),
        dataset_id=dataset.id,
        dataset_version=dataset.version,
        items=used,
        skipped=skipped,
    )


def human_games(task_ids: list[int] | None = None) -> list[Any]:
    """Every submitted compare or rank response as leaderboard games between the models
    that wrote the answers (both bad counts as a tie; a ranking is every pair in it)."""
    from sqlalchemy import select

    from tuneloop import registry
    from tuneloop.evaluation.ranking import Game
    from tuneloop.registry.tables import FeedbackTask

    with registry.session_scope() as s:
        query = select(FeedbackTask.id).where(FeedbackTask.kind.in_(("compare", "rank")))
        ids = [i for i in s.scalars(query) if task_ids is None or i in task_ids]
    games = []
    for task_id in ids:
        task, items, responses = _load(task_id)
        for item in items:
            models = [a["model"] for a in item.answers]
            for r in responses.get(item.id, []):
                v = r.value
                if task.kind == "compare" and "winner" in v:
                    w = v["winner"]
                    if models[0] != models[1]:
                        games.append(
                            Game(models[0], models[1], "a" if w == 0 else "b" if w == 1 else "tie")
                        )
                elif task.kind == "rank":
                    for hi, lo in itertools.combinations(v.get("ranking", []), 2):
                        if models[hi] != models[lo]:
                            games.append(Game(models[hi], models[lo], "a"))
    return games


def human_leaderboard(
    task_ids: list[int] | None = None, method: str = "bradley_terry", seed: int = 0
) -> dict[str, Any]:
    """The human votes' leaderboard (rating with a bootstrap interval per model)."""
    from tuneloop.evaluation.ranking import leaderboard

    games = human_games(task_ids)
    return {
        "method": method,
        "games": len(games),
        "leaderboard": leaderboard(games, method=method, seed=seed) if games else [],
    }


def task_exports(task_id: int) -> list[dict[str, Any]]:
    """The dataset versions exported from a task, newest first."""
    from sqlalchemy import select

    from tuneloop import registry
    from tuneloop.registry.tables import Dataset

    with registry.session_scope() as s:
        rows = s.scalars(
            select(Dataset)
            .where(Dataset.source.like(f"studio:task:{int(task_id)}:%"))
            .order_by(Dataset.id.desc())
        )
        return [
            {
                "id": d.id,
                "export": d.meta.get("export"),
                "rows": d.num_rows,
                "version": d.version,
                "path": d.path,
                "created_at": d.created_at.isoformat(timespec="seconds"),
            }
            for d in rows
        ]


def export_file(task_id: int, dataset_id: int) -> Path:
    """The JSONL file of one of a task's exports; `NotFound` for any other dataset, so a
    download link can never reach a file that is not a studio export of this task."""
    for e in task_exports(task_id):
        if e["id"] == dataset_id:
            path = Path(e["path"])
            if not path.is_file():
                raise NotFound(f"the file of dataset {dataset_id} is gone: {path}")
            return path
    raise NotFound(f"task {task_id} has no export dataset {dataset_id}")


def judge_task(
    task_id: int, judge: str, criteria: str | None = None, actor: str = "cli"
) -> dict[str, Any]:
    """An LLM judge on a compare task's items, beside the people: its leaderboard (the
    same Bradley-Terry fit as the human votes'), and how far it agrees with them (Cohen's
    kappa between its a/b/tie and the annotators' majority, per item). Stored with the
    task, so its page shows both side by side; returns the same dict."""
    from tuneloop import registry
    from tuneloop.data.judging import conversation_text
    from tuneloop.evaluation.agreement import cohen_kappa
    from tuneloop.evaluation.judge import Judge, position_bias
    from tuneloop.evaluation.ranking import Game, leaderboard
    from tuneloop.registry.tables import FeedbackTask

    task, items, responses = _load(task_id)
    if task.kind != "compare":
        raise TuneloopError(f"task {task_id} is a {task.kind} task; a judge compares pairs")
    the_judge = Judge(judge)
    criteria = criteria or the_judge.default_criteria()
    verdicts = the_judge.compare(
        [conversation_text(i.prompt) for i in items],
        [i.answers[0]["text"] for i in items],
        [i.answers[1]["text"] for i in items],
        criteria,
    )
    models = [(i.answers[0]["model"], i.answers[1]["model"]) for i in items]
    games = [Game(a, b, v.winner) for (a, b), v in zip(models, verdicts, strict=True) if a != b]
    said, human = [], []
    for item, v in zip(items, verdicts, strict=True):
        verdict = _verdict(task, item, responses.get(item.id, []))
        if verdict is None or verdict.get("winner") is None:
            continue
        w = verdict["winner"]
        human.append("a" if w == 0 else "b" if w == 1 else "tie")  # both bad: no preference
        said.append(v.winner)
    hits = [s == h for s, h in zip(said, human, strict=True)]
    result = {
        "judge": judge,
        "criteria": criteria,
        "items": len(items),
        "leaderboard": leaderboard(games) if games else [],
        "verdicts": {k: [v.winner for v in verdicts].count(k) for k in ("a", "b", "tie")},
        "position_bias": position_bias(verdicts),
        "judged_by_people": len(human),
        "agreement": sum(hits) / len(hits) if hits else None,
        "kappa": cohen_kappa(said, human) if len(human) >= 2 else None,
    }
    with registry.session_scope() as s:
        row = s.get(FeedbackTask, task_id)
        before = row.config.get("judge")
        row.config = {**row.config, "judge": result}
        record(s, actor, "judge", "task", task_id, {"judge": before}, {"judge": result})
    return result
