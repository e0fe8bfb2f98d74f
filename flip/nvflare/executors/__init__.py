"""Executors of a site: those that run the user's code from the job's custom/ folder, and CleanupImages.

RUN_TRAINER, RUN_VALIDATOR and RUN_EVALUATOR run whichever contract the user's class follows (FLIP's Executor,
FLIP's MONAI FL ClientAlgo, or our plain one); RUN_MONAI_FL_* require the ClientAlgo contract (FLIP's names).
"""

from flip.nvflare.executors.cleanup_images import CleanupImages
from flip.nvflare.executors.monai_fl import RUN_MONAI_FL_EVALUATOR, RUN_MONAI_FL_TRAINER, RUN_MONAI_FL_VALIDATOR
from flip.nvflare.executors.run_trainer import RUN_TRAINER
from flip.nvflare.executors.run_validator import RUN_EVALUATOR, RUN_VALIDATOR

__all__ = [
    "CleanupImages",
    "RUN_EVALUATOR",
    "RUN_MONAI_FL_EVALUATOR",
    "RUN_MONAI_FL_TRAINER",
    "RUN_MONAI_FL_VALIDATOR",
    "RUN_TRAINER",
    "RUN_VALIDATOR",
]
