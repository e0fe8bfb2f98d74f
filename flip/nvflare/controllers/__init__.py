"""Our workflows, where NVFlare's own do not serve."""

from flip.nvflare.controllers.evaluate_models import EvaluateModels
from flip.nvflare.controllers.init_training import InitTraining
from flip.nvflare.controllers.multi_stage import MultiStageScatterAndGather

__all__ = ["EvaluateModels", "InitTraining", "MultiStageScatterAndGather"]
