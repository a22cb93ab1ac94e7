"""`python -m tuneloop.cli` (what torchrun and the tests start)."""

from tuneloop.cli import main

main()
