"""The traffic log: every request the server answers, written to the registry in the
background so logging never slows an answer.

`TrafficLog.log` only appends to a bounded in-memory queue; a writer thread stores what has
gathered every half second (or every 64 records) in one transaction. When the registry
cannot keep up and the queue is full, records are dropped and counted (`dropped`, also on
/metrics) rather than blocking the server. `close` writes what is left.

With `redact` (serve's `--redact-pii`), message and answer texts pass through the same rules
as the `redact_pii` curation step before they are stored: what a customer typed into the
endpoint reaches the traffic table as `[EMAIL]`, `[CARD]`, ... and can then safely become
the next dataset.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any

BATCH = 64
MAX_PENDING = 10_000


class TrafficLog:
    """A background writer of `TrafficRecord` rows."""

    def __init__(self, redact: bool = False, url: str | None = None) -> None:
        self.redact = redact
        from tuneloop.config.home import db_url

        self.url = url or db_url()  # fixed at start: the registry the server was started on
        self.dropped = 0
        self.written = 0
        self.failures = 0
        self._pending: collections.deque[dict[str, Any]] = collections.deque()
        self._cv = threading.Condition()
        self._closing = False
        self._busy = False
        self._thread = threading.Thread(target=self._run, name="tuneloop-traffic", daemon=True)
        self._thread.start()

    def log(self, record: dict[str, Any]) -> None:
        """Queue one record (columns of `TrafficRecord`); never blocks."""
        if self.redact:
            record = self._redacted(record)
        with self._cv:
            if len(self._pending) >= MAX_PENDING:
                self.dropped += 1
                return
            self._pending.append(record)
            if len(self._pending) >= BATCH:
                self._cv.notify()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far is written (True) or `timeout` passes."""
        deadline = time.monotonic() + timeout
        with self._cv:
            self._cv.notify()
            while (self._pending or self._busy) and time.monotonic() < deadline:
                self._cv.wait(timeout=0.05)
                self._cv.notify()
            return not self._pending and not self._busy

    def close(self) -> None:
        with self._cv:
            self._closing = True
            self._cv.notify()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        from tuneloop import registry

        while True:
            with self._cv:
                if not self._pending and not self._closing:
                    self._cv.wait(timeout=0.5)
                if not self._pending and self._closing:
                    return
                batch = [self._pending.popleft() for _ in range(min(BATCH, len(self._pending)))]
                self._busy = bool(batch)
            if batch:
                try:
                    registry.add_traffic(batch, self.url)
                    self.written += len(batch)
                except Exception:  # the registry is down: count, keep serving
                    self.failures += 1
                    self.dropped += len(batch)
                    time.sleep(0.5)
            with self._cv:
                self._busy = False
                self._cv.notify_all()

    @staticmethod
    def _redacted(record: dict[str, Any]) -> dict[str, Any]:
        from tuneloop.data.pii import redact_text

        out = dict(record)
        out["messages"] = [
            {**m, "content": redact_text(str(m.get("content", "")))[0]}
            for m in record.get("messages", [])
        ]
        out["answers"] = [redact_text(str(a))[0] for a in record.get("answers", [])]
        return out
