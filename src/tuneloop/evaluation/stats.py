"""Bootstrap confidence intervals: see `tuneloop.intervals`, where they live so that training
methods can report intervals without importing evaluation."""

from tuneloop.intervals import Interval, bootstrap, mean_interval

__all__ = ["Interval", "bootstrap", "mean_interval"]
