"""Studio accounts: admins, annotators and viewers, with argon2-hashed passwords.

There are no default credentials and no self-signup: the first start of the studio creates
one admin with a random password printed once (`ensure_admin`), and admins create every
other account (`create_user`, also `tuneloop studio user add`), each with a random password
shown once. Only the hash is stored.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any

from tuneloop.errors import Conflict, NotFound, TuneloopError
from tuneloop.feedback.audit import record
from tuneloop.results import Serializable

ROLES = ("admin", "annotator", "viewer")
MIN_PASSWORD = 12
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,100}$")


@dataclass
class User(Serializable):
    id: int
    name: str
    role: str
    created_at: str
    disabled: bool

    @property
    def can_write(self) -> bool:
        """Annotators and admins write responses; viewers only read."""
        return self.role in ("admin", "annotator") and not self.disabled


def _hasher() -> Any:
    from argon2 import PasswordHasher

    return PasswordHasher()


def _user(row: Any) -> User:
    return User(
        id=row.id,
        name=row.name,
        role=row.role,
        created_at=row.created_at.isoformat(timespec="seconds"),
        disabled=row.disabled_at is not None,
    )


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise TuneloopError(f"role must be one of {', '.join(ROLES)}, got {role!r}")


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise TuneloopError(f"a password needs at least {MIN_PASSWORD} characters")


def create_user(
    name: str, role: str = "annotator", password: str | None = None, actor: str = "cli"
) -> tuple[User, str]:
    """A new account; returns it with its password (random unless given: shown once)."""
    from sqlalchemy.exc import IntegrityError

    from tuneloop.registry.db import transaction
    from tuneloop.registry.tables import StudioUser

    if not _NAME.match(name):
        raise TuneloopError(f"bad user name {name!r}: 1-100 letters, digits, '_', '.', '@' or '-'")
    _check_role(role)
    password = password if password is not None else secrets.token_urlsafe(12)
    _check_password(password)
    try:
        with transaction() as s:
            row = StudioUser(name=name, role=role, password_hash=_hasher().hash(password))
            s.add(row)
            s.flush()
            record(s, actor, "create", "user", row.id, None, {"name": name, "role": role})
            return _user(row), password
    except IntegrityError:
        raise Conflict(f"a user named {name!r} already exists") from None


def ensure_admin(name: str = "admin") -> tuple[User, str] | None:
    """On a registry without any admin, create one with a random password and return it
    (the caller prints it once); None when an admin exists already."""
    from sqlalchemy import select

    from tuneloop import registry
    from tuneloop.registry.tables import StudioUser

    with registry.session_scope() as s:
        if s.scalar(select(StudioUser.id).where(StudioUser.role == "admin").limit(1)):
            return None
    try:
        return create_user(name, "admin", actor="studio-first-start")
    except Conflict:  # a user of that name exists (not an admin), or another studio won
        return None


def list_users() -> list[User]:
    from sqlalchemy import select

    from tuneloop import registry
    from tuneloop.registry.tables import StudioUser

    with registry.session_scope() as s:
        return [_user(r) for r in s.scalars(select(StudioUser).order_by(StudioUser.name))]


def get_user(name: str) -> User:
    from sqlalchemy import select

    from tuneloop import registry
    from tuneloop.registry.tables import StudioUser

    with registry.session_scope() as s:
        row = s.scalar(select(StudioUser).where(StudioUser.name == name))
        if row is None:
            raise NotFound(f"no studio user named {name!r}")
        return _user(row)


# a hash of a random secret, verified when the name is unknown so that a wrong name takes
# as long as a wrong password (no user enumeration by timing)
_DUMMY: list[str] = []


def verify_login(name: str, password: str) -> User | None:
    """The account if `password` is its password and it is enabled, else None."""
    from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
    from sqlalchemy import select

    from tuneloop import registry
    from tuneloop.registry.tables import StudioUser

    hasher = _hasher()
    with registry.session_scope() as s:
        row = s.scalar(select(StudioUser).where(StudioUser.name == name))
        user = _user(row) if row is not None else None
        stored = row.password_hash if row is not None else None
    if stored is None:
        if not _DUMMY:
            _DUMMY.append(hasher.hash(secrets.token_urlsafe(16)))
        stored = _DUMMY[0]
    try:
        hasher.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return None
    if user is None or user.disabled:
        return None
    return user


def _change(name: str, actor: str, action: str, **fields: Any) -> User:
    from sqlalchemy import select

    from tuneloop import registry
    from tuneloop.registry.tables import StudioUser

    with registry.session_scope() as s:
        row = s.scalar(select(StudioUser).where(StudioUser.name == name))
        if row is None:
            raise NotFound(f"no studio user named {name!r}")
        before = {"role": row.role, "disabled": row.disabled_at is not None}
        for key, value in fields.items():
            setattr(row, key, value)
        s.flush()
        after = {"role": row.role, "disabled": row.disabled_at is not None}
        record(s, actor, action, "user", row.id, before, after)
        return _user(row)


def set_password(name: str, password: str | None = None, actor: str = "cli") -> str:
    """A new password for `name` (random unless given); returns it, to be shown once."""
    password = password if password is not None else secrets.token_urlsafe(12)
    _check_password(password)
    _change(name, actor, "set-password", password_hash=_hasher().hash(password))
    return password


def set_role(name: str, role: str, actor: str = "cli") -> User:
    _check_role(role)
    return _change(name, actor, "set-role", role=role)


def disable_user(name: str, actor: str = "cli") -> User:
    """The account can no longer log in; its work and audit entries stay."""
    from tuneloop.registry.tables import utcnow

    return _change(name, actor, "disable", disabled_at=utcnow())
