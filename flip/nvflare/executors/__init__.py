"""Executors of a site: those that run the user's code from the job's custom/ folder, and CleanupImages."""

from flip.nvflare.executors.cleanup_images import CleanupImages
from flip.nvflare.executors.run_trainer import RUN_TRAINER
from flip.nvflare.executors.run_validator import RUN_EVALUATOR, RUN_VALIDATOR

__all__ = ["CleanupImages", "RUN_EVALUATOR", "RUN_TRAINER", "RUN_VALIDATOR"]
