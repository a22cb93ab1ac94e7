"""Training methods, one module each (sft for now), sharing small callbacks."""
