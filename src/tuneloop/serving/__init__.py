"""The OpenAI-compatible endpoint (`tuneloop serve`): app (routes, validation, errors),
worker (queue, continuous batching, cancellation, streaming), auth (hashed API keys),
metrics (Prometheus). See docs/serving.md."""

from tuneloop.serving.app import create_app, serve
from tuneloop.serving.worker import ModelWorker

__all__ = ["ModelWorker", "create_app", "serve"]
