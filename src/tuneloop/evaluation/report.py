"""Before/after report: metrics table, loss curve and answers side by side (HTML + JSON).

The HTML is self-contained (the plot is an inline PNG), so it can be mailed or archived and
opens with no network.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

from tuneloop.evaluation.metrics import HIGHER_IS_BETTER


def loss_curve_png(history: list[dict[str, Any]]) -> bytes | None:
    """Training loss by step as a PNG, or None when nothing was logged."""
    points = [(h["step"], h["loss"]) for h in history if "loss" in h]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=110)
    ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (answer tokens)")
    ax.grid(alpha=0.3)
    return figure_png(fig)


def figure_png(fig: Any) -> bytes:
    """A matplotlib figure as PNG bytes (laid out, then closed), for inline report images."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def improved(name: str, base: float, tuned: float) -> bool:
    return tuned > base if HIGHER_IS_BETTER.get(name, True) else tuned < base


def render_template(name: str, **context: Any) -> str:
    """Render one of the package's HTML templates (autoescaped)."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(
        loader=PackageLoader("tuneloop", "templates"), autoescape=select_autoescape(["html"])
    )
    return env.get_template(name).render(**context)


def render_html(report: dict[str, Any], samples: list[dict[str, Any]], png: bytes | None) -> str:
    """The report page. `samples` hold prompt, reference, base and tuned answers."""
    rows = []
    for name, base in report["base"]["metrics"].items():
        tuned = report["tuned"]["metrics"].get(name)
        if tuned is None:
            continue
        rows.append(
            {
                "name": name,
                "base": base,
                "tuned": tuned,
                "delta": tuned - base,
                "verdict": "same"
                if tuned == base
                else ("better" if improved(name, base, tuned) else "worse"),
                "direction": "higher is better"
                if HIGHER_IS_BETTER.get(name, True)
                else "lower is better",
            }
        )
    plot = base64.b64encode(png).decode("ascii") if png else None
    return render_template(
        "report.html", report=report, rows=rows, samples=samples, plot=plot, escape=html.escape
    )
