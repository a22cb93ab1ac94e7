"""Workflows that compose the layers below: the quickstart and sweeps (later: iterate,
compare-approaches, RLAIF). They sit above `train` and `evaluate` so that neither of those
imports the other; see docs/architecture.md."""
