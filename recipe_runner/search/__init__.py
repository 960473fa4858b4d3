"""Recipe-level search over stage keys with Optuna: each trial a cached, resumable branch in MLflow."""

from .driver import Preview, SearchFailed, preview, run_search

__all__ = ["Preview", "SearchFailed", "preview", "run_search"]
