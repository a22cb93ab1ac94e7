"""Watching production: traffic summaries, drift tests, uncovered prompts (docs/monitoring.md)."""
