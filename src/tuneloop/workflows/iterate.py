"""One turn of the production loop: `tuneloop iterate RECIPE --serving URL --adapter NAME`.

1. Ask the running server which run answers as NAME now (the production model).
2. Build the next dataset version: the recipe's training rows plus the corrections users
   sent on logged answers (`traffic export --corrected`), registered with the current
   training data as its parent and the corrections as lineage.
3. Train the recipe on it: the candidate.
4. Compare the candidate with production on the suite (its tasks, the forgetting probes
   when the suite has them), and check the gate.
5. Promote only if the gate passes: hot-swap NAME's weights on the running server to the
   candidate (the admin route; no restart, no failed request). Otherwise production stays.

Every step is recorded: an `iterate` run in the registry (production, candidate, the
dataset versions, the gate and what failed, promoted or not, why) and `OUT/iterate.json`.
`tuneloop rollback --serving URL --adapter NAME` puts back the run an earlier promotion
replaced.

Corrections are taken as users sent them; reviewing them first is the studio's job (the
human feedback issue) and will slot in as a filter at step 2.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tuneloop.errors import TuneloopError

ADMIN_KEY_ENV = "TUNELOOP_ADMIN_KEY"


def _admin(url: str, method: str, path: str, body: dict | None, key: str | None) -> dict:
    headers = {"Content-Type": "application/json"}
    key = key or os.environ.get(ADMIN_KEY_ENV)
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(
        f"{url.rstrip('/')}{path}",
        json.dumps(body).encode() if body is not None else None,
        headers,
        method=method,
    )
    try:
        with urllib.request.urlopen(req, timeout=600) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as err:
        detail = err.read().decode("utf-8", "replace")[:300]
        hint = f" (set {ADMIN_KEY_ENV} to an admin key)" if err.code in (401, 403) else ""
        raise TuneloopError(f"{url}{path} answered HTTP {err.code}{hint}: {detail}") from None
    except OSError as err:
        raise TuneloopError(f"cannot reach the server at {url}: {err}") from None


def production_ref(url: str, adapter: str, key: str | None = None) -> str:
    """The run that answers as `adapter` on the server at `url` now."""
    listing = _admin(url, "GET", "/v1/admin/adapters", None, key)
    for item in listing["adapters"]:
        if item["name"] == adapter:
            return item["ref"]
    names = ", ".join(a["name"] for a in listing["adapters"]) or "none"
    raise TuneloopError(f"{url} serves no adapter {adapter!r} (adapters: {names})")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError as err:
                raise TuneloopError(f"{path}: line {n} is not JSON: {err}") from None
    return rows


def run_iterate(
    recipe: Any,
    serving: str,
    adapter: str,
    suite: str,
    gate: str,
    out: str | Path,
    since: str = "7d",
    admin_key: str | None = None,
) -> dict[str, Any]:
    """One iteration (see the module docstring); returns what iterate.json holds."""
    from tuneloop import registry
    from tuneloop.data.readers import read_conversations
    from tuneloop.evaluation.suite import check_gate, load_suite, parse_gate, write_report
    from tuneloop.evaluation.suite import compare as compare_suite
    from tuneloop.files import atomic_write_json, atomic_write_jsonl
    from tuneloop.monitoring.export import export_traffic
    from tuneloop.training import train
    from tuneloop.training.common import data_path

    parse_gate(gate)  # a malformed gate fails now, not after training
    loaded_suite = load_suite(suite)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    production = production_ref(serving, adapter, admin_key)
    train_path = Path(data_path(recipe.data.train))
    if train_path.suffix != ".jsonl":
        raise TuneloopError(
            f"iterate adds corrections to JSONL training data; {train_path} is not .jsonl "
            "(convert it with `tuneloop data curate`)"
        )
    record: dict[str, Any] = {
        "serving": serving,
        "adapter": adapter,
        "production": production,
        "suite": suite,
        "gate": gate,
        "since": since,
    }
    run = registry.start_run(f"iterate-{adapter}", "iterate", recipe=record, run_dir=str(out))
    try:
        try:
            corrected = export_traffic("corrected", out / "corrections.jsonl", since=since)
            corrections = _read_jsonl(Path(corrected.path))
        except TuneloopError as err:
            if "no corrected traffic" not in str(err):
                raise
            corrected, corrections = None, []
        next_rows = _read_jsonl(train_path) + [{"messages": c["messages"]} for c in corrections]
        next_path = out / "next_train.jsonl"
        atomic_write_jsonl(next_path, next_rows)
        # registered as training registers them (normalised rows, same source), so the
        # candidate's run reuses these versions instead of recording the files again
        current = read_conversations(train_path)
        parent = registry.register_dataset(
            train_path.stem, current.conversations, str(train_path), current.format
        )
        following = read_conversations(next_path)
        next_ds = registry.register_dataset(
            next_path.stem,
            following.conversations,
            str(next_path),
            following.format,
            meta={
                "iterate_run": run.id,
                "corrections": len(corrections),
                "corrections_dataset": corrected.dataset_id if corrected else None,
            },
            parent_id=parent.id,
        )
        record.update(corrections=len(corrections), dataset=next_ds.id, parent_dataset=parent.id)
        candidate_recipe = recipe.model_copy(
            update={"data": recipe.data.model_copy(update={"train": str(next_path)})}
        )
        trained = train(candidate_recipe)
        candidate = f"run:{trained.run_id}"
        record["candidate"] = candidate
        result = compare_suite(loaded_suite, production, candidate)
        failed = check_gate(result, gate)
        gate_info = {"expression": gate, "failed": failed}
        _, html = write_report(result, out / "compare", f"{production} vs {candidate}", gate_info)
        record.update(gate_failed=failed, report=str(html))
        if failed:
            record.update(
                promoted=False,
                reason=f"the gate failed: {'; '.join(failed)}; {production} stays in production",
            )
        else:
            _admin(serving, "POST", "/v1/admin/adapters", {"name": adapter, "ref": candidate},
                   admin_key)  # fmt: skip
            record.update(
                promoted=True,
                reason=f"the gate passed: {candidate} now answers as {adapter!r} "
                f"(was {production})",
            )
        atomic_write_json(out / "iterate.json", record)
        registry.update_run(
            run.id, status="completed", metrics={"promoted": record["promoted"]}, recipe=record
        )
        return {**record, "run_id": run.id}
    except BaseException as err:
        registry.update_run(run.id, status="failed", error=str(err)[:2000], recipe=record)
        raise


def run_rollback(serving: str, adapter: str, admin_key: str | None = None) -> dict[str, Any]:
    """Put back the run the latest promotion of `adapter` on `serving` replaced."""
    from tuneloop import registry

    current = production_ref(serving, adapter, admin_key)
    promotions = [
        r
        for r in registry.list_runs(limit=10_000, kind="iterate")
        if (r.recipe or {}).get("promoted")
        and r.recipe.get("serving") == serving
        and r.recipe.get("adapter") == adapter
        and r.recipe.get("candidate") == current
    ]
    if not promotions:
        raise TuneloopError(
            f"no recorded promotion put {current} behind {adapter!r} on {serving}: nothing to "
            "roll back to"
        )
    previous = max(promotions, key=lambda r: r.id).recipe["production"]
    _admin(serving, "POST", "/v1/admin/adapters", {"name": adapter, "ref": previous}, admin_key)
    run = registry.start_run(
        f"rollback-{adapter}",
        "rollback",
        recipe={"serving": serving, "adapter": adapter, "from": current, "to": previous},
    )
    registry.update_run(run.id, status="completed")
    return {"adapter": adapter, "from": current, "to": previous, "run_id": run.id}
