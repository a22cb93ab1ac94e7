"""Baselines beside fine-tuning: system prompts and few-shot examples on the base model,
measured on the same data as a tuned run (`tuneloop compare-approaches`, docs/baselines.md).
"""

from tuneloop.baselines.fewshot import FewShot
from tuneloop.baselines.prompts import PROMPTS, render_prompt

__all__ = ["PROMPTS", "FewShot", "render_prompt"]
