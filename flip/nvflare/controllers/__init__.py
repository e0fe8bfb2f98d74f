"""Our workflows, where NVFlare's own do not serve."""

from flip.nvflare.controllers.evaluate_models import EvaluateModels
from flip.nvflare.controllers.feddc import FedDCController
from flip.nvflare.controllers.flip_evaluation import FlipEvaluation
from flip.nvflare.controllers.init_training import InitTraining
from flip.nvflare.controllers.multi_stage import MultiStageScatterAndGather
from flip.nvflare.controllers.swag import SwagRound
from flip.nvflare.controllers.training import FlipScatterAndGather

__all__ = [
    "EvaluateModels",
    "FedDCController",
    "FlipEvaluation",
    "FlipScatterAndGather",
    "InitTraining",
    "MultiStageScatterAndGather",
    "SwagRound",
]
