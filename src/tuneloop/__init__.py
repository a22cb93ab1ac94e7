"""tuneloop: fine-tune LLMs on your own data, evaluate them, and keep them good in production.

Importing this package is cheap on purpose (no torch, no transformers): the CLI starts in
well under a second and heavy libraries load only inside the commands that need them.
"""

__version__ = "0.1.0"

from tuneloop.errors import TuneloopError

__all__ = ["TuneloopError", "__version__"]
