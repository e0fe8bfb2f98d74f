"""Our workflows, where NVFlare's own do not serve."""

from flip.nvflare.controllers.init_training import InitTraining

__all__ = ["InitTraining"]
