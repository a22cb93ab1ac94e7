"""The data card: what went in, what each step dropped or changed and why, what came out.

Built only from the rows and the step logs (the accounting every step keeps), so a card can
never disagree with what curation did. JSON for machines, self-contained HTML for people.
"""

from __future__ import annotations

import html
from collections import Counter
from typing import Any

from tuneloop.data.records import Row, answer_of
from tuneloop.data.steps import StepLog

_ARRAY_KEYS = ("prompt_tokens", "total_tokens", "scores")


def histogram(values: list[float], bins: int = 20) -> dict[str, Any]:
    """Equal-width histogram as {'edges': [...], 'counts': [...]} plus summary numbers."""
    if not values:
        return {"edges": [], "counts": [], "n": 0}
    lo, hi = min(values), max(values)
    width = (hi - lo) / bins or 1.0
    counts = [0] * bins
    for v in values:
        counts[min(int((v - lo) / width), bins - 1)] += 1
    ordered = sorted(values)
    return {
        "edges": [round(lo + i * width, 4) for i in range(bins + 1)],
        "counts": counts,
        "n": len(values),
        "min": lo,
        "median": ordered[len(ordered) // 2],
        "p95": ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))],
        "max": hi,
        "mean": round(sum(values) / len(values), 3),
    }


def _slim(log: StepLog) -> dict[str, Any]:
    """A step log without per-row arrays (those become histograms elsewhere)."""
    data = log.to_dict()
    data["details"] = {k: v for k, v in data["details"].items() if k not in _ARRAY_KEYS}
    return data


def build_card(
    name: str,
    input_info: dict[str, Any],
    rows: list[Row],
    logs: list[StepLog],
    method: str = "lora",
    labels: list[str] | None = None,
) -> dict[str, Any]:
    """Assemble the card dict from the final rows and every step's log."""
    by_step = {log.step: log for log in logs}
    card: dict[str, Any] = {
        "name": name,
        "input": input_info,
        "method": method,
        "steps": [_slim(log) for log in logs],
        "output": {
            "rows": len(rows),
            "kinds": dict(Counter(r["kind"] for r in rows)),
            "splits": dict(Counter(r.get("split", "train") for r in rows)),
        },
    }
    # lengths: tokens when the validate step measured them, else words
    if "validate" in by_step and by_step["validate"].details.get("total_tokens"):
        details = by_step["validate"].details
        card["lengths"] = {
            "unit": f"tokens ({details.get('tokenizer')})",
            "total": histogram(details["total_tokens"]),
            "prompt": histogram(details["prompt_tokens"]),
            "max_length": details.get("max_length"),
            "truncated": details.get("truncated", 0),
        }
    else:
        card["lengths"] = {
            "unit": "words (no tokenizer: add a validate step)",
            "total": histogram([float(len(answer_of(r).split())) for r in rows]),
        }
    label_counts = Counter(r["label"] for r in rows if r.get("label") is not None)
    if label_counts:
        card["labels"] = dict(sorted(label_counts.items(), key=lambda kv: (-kv[1], kv[0])))
    if "dedup" in by_step:
        card["duplicates"] = {
            "dropped": dict(by_step["dedup"].dropped),
            "num_clusters": by_step["dedup"].details.get("num_clusters", 0),
            "clusters": by_step["dedup"].details.get("clusters", []),
        }
    if "redact_pii" in by_step:
        d = by_step["redact_pii"].details
        card["pii"] = {
            "counts": d.get("pii_counts", {}),
            "rows_with_pii": d.get("rows_with_pii", 0),
            "mode": by_step["redact_pii"].params.get("mode", "redact"),
        }
    if "score" in by_step:
        d = by_step["score"].details
        card["scores"] = {k: histogram(v) for k, v in d.get("scores", {}).items()}
        card["quantity"] = d.get("quantity")
        card["diversity"] = d.get("diversity")
    card["samples"] = {
        f"{log.step}: {reason}": rows_ for log in logs for reason, rows_ in log.samples.items()
    }
    card["warnings"] = warnings(card, logs, labels)
    return card


def warnings(card: dict[str, Any], logs: list[StepLog], labels: list[str] | None) -> list[str]:
    """Plain-language findings a practitioner should act on."""
    out: list[str] = []
    info = card["input"]
    if info.get("malformed"):
        out.append(f"{info['malformed']} rows could not be read (see input.malformed_examples).")
    for log in logs:
        dropped = sum(log.dropped.values())
        if log.rows_in and dropped / log.rows_in > 0.2:
            out.append(f"Step {log.step} dropped {dropped} of {log.rows_in} rows (> 20%).")
    label_counts = card.get("labels") or {}
    if label_counts:
        small = [k for k, v in label_counts.items() if v < 10]
        if small:
            out.append(f"{len(small)} labels have fewer than 10 examples.")
        counts = list(label_counts.values())
        if len(counts) > 1 and max(counts) / max(min(counts), 1) > 10:
            out.append(
                f"Labels are imbalanced: the largest has {max(counts)} rows, the smallest "
                f"{min(counts)}."
            )
    if labels:
        missing = sorted(set(labels) - set(label_counts))
        if missing:
            out.append(f"{len(missing)} labels of the label set have no examples: {missing[:5]}")
    quantity = card.get("quantity")
    rows = card["output"]["rows"]
    if quantity:
        low, high = quantity["guideline"]
        if rows < low:
            out.append(
                f"{rows:,} rows is below the {low:,}-{high:,} usually needed for "
                f"{quantity['method']}; expect limited gains or consider synthetic data."
            )
    dup = card.get("duplicates")
    if dup and sum(dup["dropped"].values()):
        n = sum(dup["dropped"].values())
        out.append(f"{n} duplicate or near-duplicate rows were removed.")
    pii = card.get("pii")
    if pii and pii["rows_with_pii"]:
        found = ", ".join(f"{k}: {v}" for k, v in pii["counts"].items())
        out.append(f"PII found in {pii['rows_with_pii']} rows ({found}); mode {pii['mode']}.")
    lengths = card.get("lengths", {})
    if lengths.get("truncated"):
        out.append(
            f"{lengths['truncated']} rows are longer than max_length {lengths['max_length']} "
            "and will be truncated."
        )
    for log in logs:
        flagged = log.details.get("flagged") or {}
        for reason, n in flagged.items():
            out.append(f"{n} rows flagged: {reason}.")
    return out


# --- HTML -------------------------------------------------------------------------------


def _bars(hist: dict[str, Any], title: str, width: int = 520, height: int = 120) -> str:
    counts = hist.get("counts") or []
    if not counts:
        return ""
    top = max(counts) or 1
    bar_w = width / len(counts)
    rects = "".join(
        f'<rect x="{i * bar_w:.1f}" y="{height - c / top * height:.1f}" width="{bar_w - 1:.1f}" '
        f'height="{c / top * height:.1f}" fill="#4a7bd0"><title>{c}</title></rect>'
        for i, c in enumerate(counts)
    )
    lo, hi = hist["edges"][0], hist["edges"][-1]
    return (
        f"<figure><figcaption>{html.escape(title)} — n={hist['n']}, median {hist['median']}, "
        f"p95 {hist['p95']}, max {hist['max']}</figcaption>"
        f'<svg width="{width}" height="{height + 16}" role="img">{rects}'
        f'<text x="0" y="{height + 14}" font-size="11">{lo}</text>'
        f'<text x="{width}" y="{height + 14}" font-size="11" text-anchor="end">{hi}</text>'
        "</svg></figure>"
    )


def _label_bars(counts: dict[str, int], width: int = 520, row_h: int = 14) -> str:
    """A horizontal bar per label, largest first, with the count at the end of each bar."""
    if not counts:
        return ""
    top = max(counts.values()) or 1
    label_w = min(260, 7 * max(len(k) for k in counts) + 8)
    bar_room = width - label_w - 40
    items = []
    for i, (label, n) in enumerate(counts.items()):
        y = i * row_h
        w = n / top * bar_room
        items.append(
            f'<text x="{label_w - 4}" y="{y + row_h - 3}" font-size="11" text-anchor="end">'
            f"{html.escape(label[:36])}</text>"
            f'<rect x="{label_w}" y="{y + 1}" width="{w:.1f}" height="{row_h - 3}" '
            f'fill="#4a7bd0"><title>{html.escape(label)}: {n}</title></rect>'
            f'<text x="{label_w + w + 3:.1f}" y="{y + row_h - 3}" font-size="11">{n}</text>'
        )
    return (
        f"<figure><figcaption>rows per label ({len(counts)} labels)</figcaption>"
        f'<svg id="label-chart" width="{width}" height="{len(counts) * row_h}" role="img">'
        f"{''.join(items)}</svg></figure>"
    )


def _table(headers: list[str], rows: list[list[Any]], table_id: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    ident = f' id="{table_id}"' if table_id else ""
    return f"<table{ident}><tr>{head}</tr>{body}</table>"


def _row_text(row: Row) -> str:
    from tuneloop.data.records import row_texts

    return " | ".join(f"{path}: {text}" for path, text in row_texts(row))[:400]


def render_card_html(card: dict[str, Any]) -> str:
    """Self-contained HTML (inline SVG charts, no external assets)."""
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Data card — {html.escape(card['name'])}</title><style>",
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}",
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;",
        "padding:4px 8px;text-align:left;vertical-align:top;font-size:.92em}th{background:#f4f4f4}",
        ".warn{background:#fff4e5;border-left:4px solid #e69500;padding:.5em 1em}",
        "figure{margin:1em 0}figcaption{font-size:.9em;color:#444}</style></head><body>",
        f"<h1>Data card — {html.escape(card['name'])}</h1>",
    ]
    info = card["input"]
    parts.append(
        f"<p>Input <code>{html.escape(str(info.get('path')))}</code>: {info.get('rows_read')} "
        f"rows read as <b>{html.escape(str(info.get('format')))}</b> "
        f"({html.escape(str(info.get('kind')))}), {info.get('malformed', 0)} malformed. "
        f"Output: <b>{card['output']['rows']}</b> rows, splits {card['output']['splits']}.</p>"
    )
    if card["warnings"]:
        items = "".join(f"<li>{html.escape(w)}</li>" for w in card["warnings"])
        parts.append(f"<div class='warn' id='warnings'><b>Warnings</b><ul>{items}</ul></div>")
    parts.append("<h2>Steps</h2>")
    step_rows = []
    for s in card["steps"]:
        reasons = "; ".join(f"dropped {n}: {r}" for r, n in s["dropped"].items())
        changes = "; ".join(f"changed {n}: {r}" for r, n in s["changed"].items())
        step_rows.append(
            [s["step"], s["rows_in"], s["rows_out"], reasons or "-", changes or "-", s["seconds"]]
        )
    parts.append(_table(["step", "in", "out", "dropped", "changed", "seconds"], step_rows, "steps"))
    if info.get("malformed_examples"):
        parts.append("<h3>Malformed rows (first few)</h3>")
        parts.append(
            _table(
                ["where", "problem"],
                [[e["where"], e["problem"]] for e in info["malformed_examples"]],
            )
        )
    lengths = card.get("lengths", {})
    parts.append("<h2>Lengths</h2>")
    parts.append(_bars(lengths.get("total", {}), f"total length in {lengths.get('unit')}"))
    if "prompt" in lengths:
        parts.append(_bars(lengths["prompt"], "prompt length in tokens"))
    if card.get("labels"):
        parts.append(f"<h2>Labels ({len(card['labels'])})</h2>")
        parts.append(_label_bars(card["labels"]))
        parts.append(
            _table(["label", "rows"], [[k, v] for k, v in card["labels"].items()], "labels")
        )
    if card.get("duplicates"):
        dup = card["duplicates"]
        parts.append(f"<h2>Duplicates ({dup['num_clusters']} clusters)</h2>")
        parts.append(
            _table(
                ["kind", "size", "kept", "example"],
                [
                    [c.get("kind"), c.get("size"), c.get("kept"), c.get("example", "")]
                    for c in dup["clusters"][:20]
                ],
                "duplicates",
            )
        )
    if card.get("pii"):
        pii = card["pii"]
        parts.append(f"<h2>PII ({pii['rows_with_pii']} rows, mode {pii['mode']})</h2>")
        parts.append(_table(["type", "count"], [[k, v] for k, v in pii["counts"].items()]))
    if card.get("scores"):
        parts.append("<h2>Scores</h2>")
        for key, hist in card["scores"].items():
            parts.append(_bars(hist, key))
        parts.append(
            f"<p>Quantity: {card.get('quantity')}. Diversity: {card.get('diversity')}.</p>"
        )
    if card.get("samples"):
        parts.append("<h2>Sample rows per reason (dropped, changed and flagged)</h2>")
        rows = [
            [reason, r.get("source"), _row_text(r)]
            for reason, rows_ in card["samples"].items()
            for r in rows_
        ]
        parts.append(_table(["reason", "source", "row"], rows, "samples"))
    parts.append("</body></html>")
    return "\n".join(parts)
