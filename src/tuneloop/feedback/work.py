"""The annotator's side of a task: the next item, the view of it, drafts and submissions.

Blindness and side randomisation live here, on the server: each (item, annotator) gets
its own random order of the answers, stored with the response, and the annotator is sent
the answers in that order labelled A, B, C... without model names when the task is blind.
What the annotator sends back is in those display positions and is stored in the item's
own answer indices, so the export and agreement never depend on what someone was shown.

Every save carries the version the annotator loaded; a save against a newer version (the
same annotator's second tab or window) is refused with `Conflict`, never applied over it.
"""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

from tuneloop.errors import Conflict, Forbidden, NotFound, TuneloopError
from tuneloop.feedback.accounts import User
from tuneloop.feedback.audit import record

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
CHOICES = ("a", "b", "tie", "both_bad")
ABANDONED = timedelta(hours=1)  # a draft untouched this long no longer holds its item
MAX_TEXT = 20_000


def _may_work(task: Any, user: User) -> None:
    if not user.can_write:
        raise Forbidden(f"{user.name} ({user.role}) cannot annotate")
    named = task.config.get("annotators")
    if named is not None and user.name not in named and user.role != "admin":
        raise Forbidden(f"task {task.id} is assigned to {', '.join(named)}")
    if task.status != "open":
        raise Conflict(f"task {task.id} is {task.status}")


def _load_task(s: Any, task_id: int) -> Any:
    from tuneloop.registry.tables import FeedbackTask

    task = s.get(FeedbackTask, task_id)
    if task is None:
        raise NotFound(f"no feedback task {task_id}")
    return task


def _lock_task(s: Any, task_id: int) -> None:
    """Serialise this transaction with every other one on the task that hands out or
    completes items: a no-op write of the task row takes the row lock on PostgreSQL and
    the write lock on SQLite before anything is counted, so two annotators can never both
    take an item's last place."""
    from sqlalchemy import update

    from tuneloop.registry.tables import FeedbackTask

    s.execute(
        update(FeedbackTask).where(FeedbackTask.id == task_id).values(status=FeedbackTask.status)
    )


def next_item(task_id: int, user: User) -> int | None:
    """The item `user` should do next: their open draft, else the first item that still
    needs responses and that they have not answered; None when nothing is left. Taking an
    item creates the user's draft (with its random answer order), which holds a place
    among the item's `overlap` annotators until submitted or abandoned."""
    from sqlalchemy import func, select
    from sqlalchemy.exc import IntegrityError

    from tuneloop.registry.db import transaction
    from tuneloop.registry.tables import FeedbackItem, FeedbackResponse, utcnow

    for _ in range(5):
        try:
            with transaction() as s:
                _lock_task(s, task_id)
                task = _load_task(s, task_id)
                _may_work(task, user)
                overlap = int(task.config.get("overlap", 1))
                for draft in s.scalars(
                    select(FeedbackResponse)
                    .where(
                        FeedbackResponse.task_id == task_id,
                        FeedbackResponse.annotator == user.name,
                        FeedbackResponse.status == "draft",
                    )
                    .order_by(FeedbackResponse.id)
                ):
                    full = s.scalar(
                        select(func.count()).where(
                            FeedbackResponse.item_id == draft.item_id,
                            FeedbackResponse.status == "submitted",
                        )
                    )
                    if full < overlap:
                        return int(draft.item_id)
                    # the draft waited past ABANDONED and others completed the item: let it
                    # go (kept, marked) rather than hand back an item that cannot be submitted
                    draft.status = "abandoned"
                    record(
                        s,
                        user.name,
                        "abandon",
                        "response",
                        draft.id,
                        {"status": "draft"},
                        {"status": "abandoned"},
                    )
                stale = utcnow() - ABANDONED
                holding = (
                    select(FeedbackResponse.item_id, func.count().label("n"))
                    .where(
                        FeedbackResponse.task_id == task_id,
                        (FeedbackResponse.status == "submitted")
                        | (FeedbackResponse.updated_at > stale),
                    )
                    .group_by(FeedbackResponse.item_id)
                    .subquery()
                )
                answered = select(FeedbackResponse.item_id).where(
                    FeedbackResponse.task_id == task_id, FeedbackResponse.annotator == user.name
                )
                item = s.scalar(
                    select(FeedbackItem)
                    .outerjoin(holding, holding.c.item_id == FeedbackItem.id)
                    .where(
                        FeedbackItem.task_id == task_id,
                        FeedbackItem.id.not_in(answered),
                        func.coalesce(holding.c.n, 0) < overlap,
                    )
                    .order_by(FeedbackItem.position)
                    .limit(1)
                )
                if item is None:
                    return None
                order = list(range(len(item.answers)))
                random.SystemRandom().shuffle(order)
                taken = FeedbackResponse(
                    task_id=task_id, item_id=item.id, annotator=user.name, order=order
                )
                s.add(taken)
                s.flush()
                record(
                    s,
                    user.name,
                    "take",
                    "response",
                    taken.id,
                    None,
                    {"item_id": item.id, "order": order},
                )
                return int(item.id)
        except IntegrityError:  # the same user took an item in two tabs at once: re-read
            continue
    raise Conflict("could not take an item; try again")


def _display_value(kind: str, value: dict[str, Any], order: list[int]) -> dict[str, Any]:
    """A stored value (item indices) as the annotator sees it (display positions)."""
    if not value:
        return {}
    out: dict[str, Any] = {"comment": value.get("comment", "")}
    if kind == "rate":
        out["ratings"] = [value.get("ratings", [{}] * len(order))[i] for i in order]
        out["flags"] = [value.get("flags", [[]] * len(order))[i] for i in order]
    elif kind == "compare":
        w = value.get("winner")
        out["choice"] = LETTERS[order.index(w)].lower() if isinstance(w, int) else w
    elif kind == "rank":
        out["ranking"] = [order.index(i) for i in value.get("ranking", [])]
    elif kind == "correct":
        out["correction"] = value.get("correction", "")
    return out


def _stored_value(
    task: Any, sent: dict[str, Any], order: list[int], complete: bool
) -> dict[str, Any]:
    """What an annotator sent (display positions) in item indices, validated; on submit
    (`complete`) every part must be filled in. Errors name the field."""
    kind, n = task.kind, len(order)
    if not isinstance(sent, dict):
        raise TuneloopError("the response must be a JSON object")
    comment = sent.get("comment", "")
    if not isinstance(comment, str) or len(comment) > MAX_TEXT:
        raise TuneloopError(f"comment must be text of at most {MAX_TEXT} characters")
    value: dict[str, Any] = {"comment": comment}
    if kind == "rate":
        low, high = task.config.get("scale", [1, 5])
        criteria, flags = task.config["criteria"], task.config["flags"]
        ratings = sent.get("ratings", [{} for _ in range(n)])
        marks = sent.get("flags", [[] for _ in range(n)])
        if not (isinstance(ratings, list) and len(ratings) == n):
            raise TuneloopError(f"ratings must be a list with one entry per answer ({n})")
        if not (isinstance(marks, list) and len(marks) == n):
            raise TuneloopError(f"flags must be a list with one entry per answer ({n})")
        stored_r: list[dict[str, int]] = [{} for _ in range(n)]
        stored_f: list[list[str]] = [[] for _ in range(n)]
        for pos, (given, marked) in enumerate(zip(ratings, marks, strict=True)):
            label = LETTERS[pos]
            if not isinstance(given, dict):
                raise TuneloopError(f"ratings[{pos}] must be an object of criterion: score")
            for criterion, score in given.items():
                if criterion not in criteria:
                    raise TuneloopError(f"answer {label}: unknown criterion {criterion!r}")
                if score is None:
                    continue
                whole = isinstance(score, int) and not isinstance(score, bool)
                if not whole or not low <= score <= high:
                    raise TuneloopError(
                        f"answer {label}: {criterion} must be a whole number {low}-{high}"
                    )
            missing = [c for c in criteria if given.get(c) is None]
            if complete and missing:
                raise TuneloopError(f"answer {label}: rate {', '.join(missing)}")
            if not isinstance(marked, list) or any(f not in flags for f in marked):
                raise TuneloopError(f"flags[{pos}]: each flag must be one of {', '.join(flags)}")
            stored_r[order[pos]] = {c: s for c, s in given.items() if s is not None}
            stored_f[order[pos]] = sorted(set(marked))
        value["ratings"], value["flags"] = stored_r, stored_f
    elif kind == "compare":
        choice = sent.get("choice")
        if choice is None and not complete:
            return value
        if choice not in CHOICES:
            raise TuneloopError(f"choice must be one of {', '.join(CHOICES)}, got {choice!r}")
        value["winner"] = order["ab".index(choice)] if choice in ("a", "b") else choice
    elif kind == "rank":
        ranking = sent.get("ranking")
        if ranking is None and not complete:
            return value
        if not (
            isinstance(ranking, list)
            and all(isinstance(r, int) and not isinstance(r, bool) for r in ranking)
            and sorted(ranking) == list(range(n))
        ):
            raise TuneloopError(
                f"ranking must order all {n} answers, best first, each once (got {ranking!r})"
            )
        value["ranking"] = [order[r] for r in ranking]
    elif kind == "correct":
        text = sent.get("correction", "")
        if not isinstance(text, str) or len(text) > MAX_TEXT:
            raise TuneloopError(f"correction must be text of at most {MAX_TEXT} characters")
        if complete and not text.strip():
            raise TuneloopError("the correction is empty")
        value["correction"] = text
    return value


def item_view(task_id: int, item_id: int, user: User) -> dict[str, Any]:
    """What `user` sees of one item: the prompt, the answers in their own order (model
    names only when the task is not blind, or to an admin), and their own response. An
    annotator sees only items they took and only their own work."""
    from sqlalchemy import select

    from tuneloop import registry
    from tuneloop.registry.tables import FeedbackItem, FeedbackResponse

    with registry.session_scope() as s:
        task = _load_task(s, task_id)
        item = s.get(FeedbackItem, item_id)
        if item is None or item.task_id != task_id:
            raise NotFound(f"task {task_id} has no item {item_id}")
        mine = s.scalar(
            select(FeedbackResponse).where(
                FeedbackResponse.item_id == item_id, FeedbackResponse.annotator == user.name
            )
        )
        if mine is None and user.role != "admin":
            raise Forbidden(f"item {item_id} is not assigned to {user.name}")
        order = mine.order if mine is not None else list(range(len(item.answers)))
        show_models = not task.config.get("blind", True) or user.role == "admin"
        answers = []
        for pos, idx in enumerate(order):
            answer = {"label": LETTERS[pos], "text": item.answers[idx]["text"]}
            if show_models:
                answer["model"] = item.answers[idx]["model"]
            answers.append(answer)
        return {
            "task": {
                "id": task.id,
                "name": task.name,
                "kind": task.kind,
                "criteria": task.config.get("criteria", []),
                "flags": task.config.get("flags", []),
                "scale": task.config.get("scale", [1, 5]),
                "instructions": task.config.get("instructions", ""),
                "blind": task.config.get("blind", True),
            },
            "item_id": item.id,
            "position": item.position,
            "prompt": item.prompt,
            "reference": item.reference,  # the expected answer: it names no model
            "answers": answers,
            "value": _display_value(task.kind, mine.value, order) if mine is not None else {},
            "version": mine.version if mine is not None else 0,
            "status": mine.status if mine is not None else None,
        }


def save_response(
    task_id: int,
    item_id: int,
    user: User,
    value: dict[str, Any],
    version: int,
    submit: bool = False,
) -> dict[str, Any]:
    """Save `user`'s draft of an item, or submit it. `version` is the version the user
    loaded: if the response changed since, `Conflict` (reload, nothing is overwritten).
    Returns the new version and status."""
    from sqlalchemy import func, select, update

    from tuneloop import registry
    from tuneloop.registry.tables import FeedbackResponse, utcnow

    with registry.session_scope() as s:
        if submit:
            _lock_task(s, task_id)
        task = _load_task(s, task_id)
        _may_work(task, user)
        mine = s.scalar(
            select(FeedbackResponse).where(
                FeedbackResponse.item_id == item_id, FeedbackResponse.annotator == user.name
            )
        )
        if mine is None or mine.task_id != task_id:
            raise Forbidden(f"item {item_id} is not assigned to {user.name}; open it first")
        if mine.status == "abandoned":
            raise Conflict(
                f"item {item_id} was completed by others while your draft waited; "
                "take the next item"
            )
        stored = _stored_value(task, value, mine.order, complete=submit)
        before = {"value": mine.value, "status": mine.status, "version": mine.version}
        if mine.version != version:
            raise Conflict(
                f"item {item_id} changed since you loaded it (your version {version}, now "
                f"{mine.version}); reload to see the newer answer"
            )
        if submit and mine.status != "submitted":
            overlap = int(task.config.get("overlap", 1))
            done = s.scalar(
                select(func.count()).where(
                    FeedbackResponse.item_id == item_id, FeedbackResponse.status == "submitted"
                )
            )
            if done >= overlap:
                raise Conflict(f"item {item_id} already has its {overlap} response(s)")
        now = utcnow()
        status = "submitted" if submit or mine.status == "submitted" else "draft"
        fields: dict[str, Any] = {
            "value": stored,
            "version": version + 1,
            "status": status,
            "updated_at": now,
        }
        if submit and mine.submitted_at is None:
            fields["submitted_at"] = now
            fields["seconds"] = (now - mine.created_at).total_seconds()
        # the version check and the write are one statement: two saves of one version
        # cannot both win, on SQLite or PostgreSQL
        done_rows = s.execute(
            update(FeedbackResponse)
            .where(FeedbackResponse.id == mine.id, FeedbackResponse.version == version)
            .values(**fields)
        ).rowcount
        if done_rows != 1:
            raise Conflict(f"item {item_id} changed while saving; reload")
        record(
            s,
            user.name,
            "submit" if submit else "save",
            "response",
            mine.id,
            before,
            {"value": stored, "status": status, "version": version + 1},
        )
        return {"version": version + 1, "status": status}


def item_responses(task_id: int, item_id: int, user: User) -> list[dict[str, Any]]:
    """Every response to an item with who wrote it: admins only (the disagreement view);
    an annotator asking gets `Forbidden`, so blind work stays blind."""
    from sqlalchemy import select

    from tuneloop import registry
    from tuneloop.registry.tables import FeedbackItem, FeedbackResponse

    if user.role != "admin":
        raise Forbidden("only admins see other annotators' responses")
    with registry.session_scope() as s:
        item = s.get(FeedbackItem, item_id)
        if item is None or item.task_id != task_id:
            raise NotFound(f"task {task_id} has no item {item_id}")
        rows = s.scalars(
            select(FeedbackResponse)
            .where(FeedbackResponse.item_id == item_id)
            .order_by(FeedbackResponse.id)
        )
        return [
            {
                "annotator": r.annotator,
                "status": r.status,
                "value": r.value,
                "version": r.version,
                "seconds": r.seconds,
            }
            for r in rows
        ]
