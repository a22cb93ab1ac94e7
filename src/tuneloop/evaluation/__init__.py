"""Evaluation: batched generation, metrics, per-example results and reports."""

from tuneloop.evaluation.run import EvalOutput, evaluate_conversations, evaluate_file

__all__ = ["EvalOutput", "evaluate_conversations", "evaluate_file"]
