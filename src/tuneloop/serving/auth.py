"""API keys for `tuneloop serve`: stored hashed (argon2), checked per request.

A key looks like `tl-<id>-<secret>`. Keys live in a keys file (`--keys FILE`) or in the
registry (`--registry-keys`, the `api_keys` table): the registry is the place for several
replicas on one PostgreSQL database, which then share every key and every revocation.
Either way only the argon2 hash of the secret is stored, so a leaked file or table gives no
working key, and `id` finds the record without trying every hash. The `admin` scope is for
the routes that change a running server; `user` keys call the model.

The keys file is JSON lines, one record per key: `{"id", "name", "scope", "hash",
"created"}`, mode 600. A running server re-reads its source at most once a second (the
file when it changed, the table always), so `tuneloop keys revoke` takes effect within a
second, without a restart.

Argon2 is slow on purpose (tens of milliseconds), so a key that verified is remembered in
memory by its SHA-256 for as long as its record is unchanged; a wrong key is never cached
and costs a full verification every time.

`path=None` in the functions below means the registry.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tuneloop.errors import TuneloopError

SCOPES = ("user", "admin")
PREFIX = "tl-"


@dataclass(frozen=True)
class KeyRecord:
    id: str
    name: str
    scope: str
    hash: str
    created: str

    def public(self) -> dict[str, str]:
        """What `tuneloop keys list` shows: everything but the hash."""
        return {"id": self.id, "name": self.name, "scope": self.scope, "created": self.created}


def _hasher() -> Any:
    from argon2 import PasswordHasher

    return PasswordHasher()


def read_keys(path: str | Path) -> list[KeyRecord]:
    """The records of a keys file; a malformed line is an error naming its number."""
    path = Path(path)
    if not path.exists():
        raise TuneloopError(
            f"keys file {path} does not exist (create keys with `tuneloop keys create`)"
        )
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            record = KeyRecord(
                **{k: str(raw[k]) for k in ("id", "name", "scope", "hash", "created")}
            )
        except (ValueError, KeyError, TypeError) as err:
            raise TuneloopError(f"{path}: line {n} is not a key record ({err})") from None
        if record.scope not in SCOPES:
            raise TuneloopError(f"{path}: line {n}: scope {record.scope!r} is not one of {SCOPES}")
        out.append(record)
    return out


def _write_keys(path: Path, records: list[KeyRecord]) -> None:
    from tuneloop.files import atomic_write_text

    text = "".join(
        json.dumps({**r.public(), "hash": r.hash}, sort_keys=True) + "\n" for r in records
    )
    atomic_write_text(path, text)
    path.chmod(0o600)


def _from_row(row: Any) -> KeyRecord:
    """A registry `api_keys` row as the record a keys file holds."""
    created = row.created_at.isoformat(timespec="seconds")
    return KeyRecord(id=row.key_id, name=row.name, scope=row.scope, hash=row.hash, created=created)


def _registry_keys() -> list[KeyRecord]:
    from tuneloop import registry

    return [_from_row(r) for r in registry.active_api_keys()]


def list_keys(path: str | Path | None) -> list[KeyRecord]:
    """The keys of a keys file, or of the registry (path None)."""
    return read_keys(path) if path is not None else _registry_keys()


def create_key(path: str | Path | None, name: str, scope: str = "user") -> tuple[str, KeyRecord]:
    """A new key added to the file (created if absent) or the registry (path None); the key
    itself is returned once and stored nowhere."""
    if scope not in SCOPES:
        raise TuneloopError(f"scope must be one of {SCOPES}, got {scope!r}")
    records = list_keys(path) if path is None or Path(path).exists() else []
    where = str(path) if path is not None else "the registry"
    if any(r.name == name for r in records):
        raise TuneloopError(f"{where} already has a key named {name!r}; revoke it first")
    key_id = secrets.token_hex(4)
    while any(r.id == key_id for r in records):
        key_id = secrets.token_hex(4)
    secret = secrets.token_urlsafe(24)
    record = KeyRecord(
        id=key_id,
        name=name,
        scope=scope,
        hash=_hasher().hash(secret),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    if path is None:
        from tuneloop import registry

        registry.add_api_key(key_id, name, scope, record.hash)
    else:
        _write_keys(Path(path), [*records, record])
    return f"{PREFIX}{key_id}-{secret}", record


def revoke_key(path: str | Path | None, which: str) -> KeyRecord:
    """Remove the key with this id or name (from the registry: mark it revoked)."""
    if path is None:
        from tuneloop import registry

        return _from_row(registry.revoke_api_key(which))
    path = Path(path)
    records = read_keys(path)
    hits = [r for r in records if which in (r.id, r.name)]
    if not hits:
        raise TuneloopError(f"{path} has no key with id or name {which!r}")
    _write_keys(path, [r for r in records if r not in hits])
    return hits[0]


class KeyStore:
    """Checks bearer keys against a keys file (re-read when it changes) or the registry
    (`path=None`, re-read at most once a second)."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._records: dict[str, KeyRecord] = {}
        self._stamp: tuple[float, int] | None = None
        self._checked = 0.0
        self._verified: dict[str, KeyRecord] = {}  # sha256(key) -> record
        self._reload()
        if not self._records:
            where = f"keys file {self.path}" if self.path else "the registry"
            raise TuneloopError(
                f"{where} has no keys (create one with `tuneloop keys create"
                f"{' --file ' + str(self.path) if self.path else ''} NAME`)"
            )

    def _reload(self) -> None:
        if self.path is None:
            records = _registry_keys()
        else:
            stat = self.path.stat()
            stamp = (stat.st_mtime, stat.st_size)
            if stamp == self._stamp:
                return
            records = read_keys(self.path)
            self._stamp = stamp
        self._records = {r.id: r for r in records}
        self._verified = {h: r for h, r in self._verified.items() if self._records.get(r.id) == r}

    def check(self, key: str | None) -> KeyRecord | None:
        """The record of a valid key, else None."""
        if not key or not key.startswith(PREFIX) or key.count("-") < 2:
            return None
        with self._lock:
            now = time.monotonic()
            if now - self._checked > 1.0:
                self._checked = now
                try:
                    self._reload()
                except (OSError, TuneloopError):
                    # an unreadable file or database: nobody gets in until it reads again
                    self._records, self._verified, self._stamp = {}, {}, None
            digest = hashlib.sha256(key.encode()).hexdigest()
            for known, record in self._verified.items():
                if hmac.compare_digest(known, digest):
                    return record
            key_id, secret = key[len(PREFIX) :].split("-", 1)
            record = self._records.get(key_id)
        if record is None:
            return None
        from argon2.exceptions import VerificationError, VerifyMismatchError

        try:
            _hasher().verify(record.hash, secret)
        except (VerifyMismatchError, VerificationError, ValueError):
            return None
        with self._lock:
            if self._records.get(record.id) == record:
                self._verified[digest] = record
        return record
