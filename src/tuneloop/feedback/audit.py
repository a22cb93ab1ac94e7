"""The append-only audit log: every change to an account, task, response or resolution.

Writers add their entry inside the same transaction as the change, so the log can never
miss a change that happened or record one that rolled back; the exceptions are an export
(its dataset version is registered first, in the registry's own transaction, and the
entry follows) and `log_event`, for changes outside the database (a job started or
cancelled). The database refuses to update or delete an entry (triggers, migration 0008).
"""

from __future__ import annotations

from typing import Any

from tuneloop.results import plain


def record(
    session: Any,
    actor: str,
    action: str,
    entity: str,
    entity_id: int | None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> None:
    """Add one audit entry to `session` (committed with the change it describes)."""
    from tuneloop.registry.tables import AuditEntry

    session.add(
        AuditEntry(
            actor=actor,
            action=action,
            entity=entity,
            entity_id=entity_id,
            before=plain(before) if before is not None else None,
            after=plain(after) if after is not None else None,
        )
    )


def log_event(
    actor: str, action: str, entity: str, entity_id: int | None, after: dict[str, Any]
) -> None:
    """An audit entry of its own, for a change that is not a registry write (the studio's
    background jobs)."""
    from tuneloop import registry

    with registry.session_scope() as s:
        record(s, actor, action, entity, entity_id, None, after)


def audit_log(
    entity: str | None = None, entity_id: int | None = None, limit: int = 200
) -> list[dict[str, Any]]:
    """The newest entries first, optionally for one entity (`task`, `response`, `user`)."""
    from sqlalchemy import select

    from tuneloop import registry
    from tuneloop.registry.tables import AuditEntry

    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
    if entity is not None:
        query = query.where(AuditEntry.entity == entity)
    if entity_id is not None:
        query = query.where(AuditEntry.entity_id == entity_id)
    with registry.session_scope() as s:
        return [
            {
                "id": e.id,
                "at": e.at.isoformat(timespec="seconds"),
                "actor": e.actor,
                "action": e.action,
                "entity": e.entity,
                "entity_id": e.entity_id,
                "before": e.before,
                "after": e.after,
            }
            for e in s.scalars(query)
        ]
