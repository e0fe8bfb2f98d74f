"""The public components job configs name as ``flip.nvflare.components.<Class>`` (see SPEC.md), plus
GaussianPrivacy (client-level differential privacy)."""

from flip.nvflare.components.cleanup_images import CleanupImages
from flip.nvflare.components.client_event_handler import ClientEventHandler
from flip.nvflare.components.evaluation_json_generator import EvaluationJsonGenerator
from flip.nvflare.components.evaluation_pt_model_locator import EvaluationPTModelLocator
from flip.nvflare.components.gaussian_privacy import GaussianPrivacy
from flip.nvflare.components.initial_pt_model_locator import InitialPTModelLocator
from flip.nvflare.components.percentile_privacy import PercentilePrivacy
from flip.nvflare.components.persist_to_s3_and_cleanup import PersistToS3AndCleanup
from flip.nvflare.components.pt_model_locator import PTModelLocator
from flip.nvflare.components.server_event_handler import ServerEventHandler
from flip.nvflare.components.stage_percentile_privacy import StagePercentilePrivacy
from flip.nvflare.components.validation_json_generator import ValidationJsonGenerator

__all__ = [
    "CleanupImages",
    "ClientEventHandler",
    "EvaluationJsonGenerator",
    "EvaluationPTModelLocator",
    "GaussianPrivacy",
    "InitialPTModelLocator",
    "PTModelLocator",
    "PercentilePrivacy",
    "PersistToS3AndCleanup",
    "ServerEventHandler",
    "StagePercentilePrivacy",
    "ValidationJsonGenerator",
]
