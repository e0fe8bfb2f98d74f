"""Executors that run the user's code from the job's custom/ folder."""

from flip.nvflare.executors.run_trainer import RUN_TRAINER
from flip.nvflare.executors.run_validator import RUN_EVALUATOR, RUN_VALIDATOR

__all__ = ["RUN_EVALUATOR", "RUN_TRAINER", "RUN_VALIDATOR"]
