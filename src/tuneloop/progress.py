"""Progress bars on stderr for long work (generation, training); off with TUNELOOP_NO_PROGRESS=1."""

from __future__ import annotations

import os
import sys
from typing import Any


class Progress:
    """A tqdm bar with ETA; `update(n)` advances it, `postfix(**kv)` shows live numbers."""

    def __init__(self, total: int, desc: str, unit: str = "it") -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(
            total=total,
            desc=desc,
            unit=unit,
            file=sys.stderr,
            dynamic_ncols=True,
            disable=bool(os.environ.get("TUNELOOP_NO_PROGRESS")),
            leave=True,
        )

    def update(self, n: int = 1) -> None:
        self._bar.update(n)

    def postfix(self, **values: Any) -> None:
        self._bar.set_postfix(values, refresh=False)

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
