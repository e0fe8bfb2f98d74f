"""Every component a job config names as ``flip.nvflare.components.<Class>``: the eleven of SPEC.md (CleanupImages,
an Executor, lives in flip.nvflare.executors and is re-exported here, where FLIP's configs name it), plus
GaussianPrivacy (client-level differential privacy), SitePrivacyPolicy (a site's own DP policy: record-level DP-SGD
or client-level, and its budget ledger), SampleWeightedAggregator, FedOptShareableGenerator,
FlipModelPersistor (the model a run starts from, per-round models), FlipModelSelector (the best model) and
UncertaintyPlan."""

from flip.nvflare.components.client_event_handler import ClientEventHandler
from flip.nvflare.components.evaluation_json_generator import EvaluationJsonGenerator
from flip.nvflare.components.evaluation_pt_model_locator import EvaluationPTModelLocator
from flip.nvflare.components.fedopt_shareable_generator import FedOptShareableGenerator
from flip.nvflare.components.flip_model_persistor import FlipModelPersistor
from flip.nvflare.components.flip_model_selector import FlipModelSelector
from flip.nvflare.components.gaussian_privacy import GaussianPrivacy
from flip.nvflare.components.initial_pt_model_locator import InitialPTModelLocator
from flip.nvflare.components.percentile_privacy import PercentilePrivacy
from flip.nvflare.components.persist_to_s3_and_cleanup import PersistToS3AndCleanup
from flip.nvflare.components.pt_model_locator import PTModelLocator
from flip.nvflare.components.sample_weighted_aggregator import SampleWeightedAggregator
from flip.nvflare.components.server_event_handler import ServerEventHandler
from flip.nvflare.components.site_privacy_policy import SitePrivacyPolicy
from flip.nvflare.components.stage_percentile_privacy import StagePercentilePrivacy
from flip.nvflare.components.uncertainty_plan import UncertaintyPlan
from flip.nvflare.components.validation_json_generator import ValidationJsonGenerator
from flip.nvflare.executors.cleanup_images import CleanupImages

__all__ = [
    "CleanupImages",
    "ClientEventHandler",
    "EvaluationJsonGenerator",
    "EvaluationPTModelLocator",
    "FedOptShareableGenerator",
    "FlipModelPersistor",
    "FlipModelSelector",
    "GaussianPrivacy",
    "InitialPTModelLocator",
    "PTModelLocator",
    "PercentilePrivacy",
    "PersistToS3AndCleanup",
    "SampleWeightedAggregator",
    "ServerEventHandler",
    "SitePrivacyPolicy",
    "StagePercentilePrivacy",
    "UncertaintyPlan",
    "ValidationJsonGenerator",
]
