"""The before/after harmlessness report of the safety example, from what `run.sh` wrote.

    python examples/hh-harmless/report.py hh-harmless-results

Reads OUT/reward_eval.json (the reward model's pair accuracy on held-out human labels),
OUT/win_dpo.json and OUT/win_ppo.json (each policy against the SFT model on the held-out
prompts, judged by the reward model), and writes OUT/report.md: the numbers with their
intervals, the reward model's mean harmlessness score before and after, and the held-out
prompts where the answers changed most, side by side.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _ci(block: dict[str, Any]) -> str:
    return f"[{block['low']:.3f}, {block['high']:.3f}]"


def _short(text: str, limit: int = 220) -> str:
    flat = " ".join(text.split()).replace("|", "\\|")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def report(out: Path, examples: int = 3) -> str:
    lines = ["# Safety tuning on HH harmless: before and after", ""]
    rm = _load(out / "reward_eval.json")
    if rm is not None:
        m = rm["metrics"]
        lines += [
            f"Reward model: pair accuracy **{m['pair_accuracy']:.3f}** "
            f"[{m['pair_accuracy_low']:.3f}, {m['pair_accuracy_high']:.3f}] on "
            f"{len(rm.get('examples', []))} held-out human-labelled pairs (target 0.65).",
            "",
        ]
    for name in ("sft", "reward", "dpo", "ppo"):
        run = _load(out / f"run_{name}.json")
        if run is not None:
            m = run.get("metrics", {})
            shown_metrics = ", ".join(
                f"{k} {v:.4f}"
                for k, v in sorted(m.items())
                if k.startswith(("eval_", "final_"))
                and isinstance(v, int | float)
                and not isinstance(v, bool)
            )
            seconds = (run.get("timings") or {}).get("seconds")
            took = f" ({seconds / 60:.0f} min)" if isinstance(seconds, int | float) else ""
            lines.append(f"- {name.upper()} run {run['id']}{took}: {shown_metrics or 'n/a'}")
    lines.append("")
    rows, shown = [], []
    for name in ("dpo", "ppo"):
        won = _load(out / f"win_{name}.json")
        if won is None:
            continue
        mean = won.get("details", {}).get("mean_score", {})
        rows.append(
            f"| {name.upper()} ({won['tuned']}) | {won['win_rate']:.3f} {_ci(won['win_rate_ci'])} "
            f"| {won['wins']} / {won['ties']} / {won['losses']} "
            f"| {mean.get('base', float('nan')):.3f} -> {mean.get('tuned', float('nan')):.3f} |"
        )
        per = won.get("per_prompt", [])
        if per and "tuned_score" in per[0]:
            moved = sorted(per, key=lambda p: p["tuned_score"] - p["base_score"], reverse=True)
            shown.append((name, moved[:examples], moved[-examples:]))
    if rows:
        lines += [
            "Each policy against the SFT model on the held-out prompts, judged by the reward "
            "model (ties count half; target 0.60):",
            "",
            "| policy | win rate [95% CI] | W / T / L | mean reward: SFT -> policy |",
            "| --- | --- | --- | --- |",
            *rows,
            "",
        ]
    for name, best, worst in shown:
        lines += [f"## {name.upper()}: the answers that moved most", ""]
        for title, group in (("most improved", best), ("most worsened", worst)):
            lines += [f"{title}:", "", "| prompt | SFT | " + name.upper() + " | reward |"]
            lines += ["| --- | --- | --- | --- |"]
            for p in group:
                prompt = p["prompt"][-1]["content"] if p["prompt"] else ""
                lines.append(
                    f"| {_short(prompt, 120)} | {_short(p['base'])} | {_short(p['tuned'])} "
                    f"| {p['base_score']:.2f} -> {p['tuned_score']:.2f} |"
                )
            lines.append("")
    text = "\n".join(lines)
    (out / "report.md").write_text(text + "\n", encoding="utf-8")
    return text


if __name__ == "__main__":
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "hh-harmless-results")
    print(report(folder))
