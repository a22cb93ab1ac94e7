"""The human feedback studio: a web app over `tuneloop.feedback` (see docs/studio.md)."""
