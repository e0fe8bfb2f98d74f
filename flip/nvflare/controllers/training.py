"""FlipScatterAndGather: NVFlare's ScatterAndGather with FLIP's trainer options (FedProx, per-round tests)."""

from __future__ import annotations

from nvflare.apis.controller_spec import ClientTask, Task
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.apis.signal import Signal
from nvflare.app_common.abstract.model import ModelLearnableKey
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType
from nvflare.app_common.workflows.scatter_and_gather import ScatterAndGather

from flip import site_messages
from flip.checks import (
    check_bool,
    check_component_id,
    check_int,
    check_number,
    check_positive_int,
    check_timeout_seconds,
)
from flip.constants import ComponentId, FlipEvent, FlipMeta, FlipProp, FlipTask
from flip.errors import NonFiniteModelError
from flip.methods.weighted import check_finite
from flip.nvflare.utils import peer_name


def budget_exceeded_next(result: Shareable, site: str, next_round: int) -> str | None:
    """A reason to stop if a site's update says its next one would exceed its privacy budget."""
    try:
        applied = site_messages.privacy_annotations(from_shareable(result).get_meta_prop(FlipMeta.PRIVACY))
    except (ValueError, TypeError):  # not a DXO, or annotations a site may not send (the event handler logs them)
        return None
    for record in applied:
        following, budget = record.get("next_epsilon"), record.get("max_epsilon")
        if isinstance(following, (int, float)) and isinstance(budget, (int, float)) and following > budget:
            return (
                f"privacy budget: {site} would spend ε={following:.3g} > max_epsilon {budget:g} in round {next_round}"
            )
    return None


def check_mu(fedprox_mu) -> float:
    """Return FedProx's ``mu`` if it is a finite number >= 0."""
    return check_number("fedprox_mu", fedprox_mu, 0)


def check_rounds_args(
    *,
    min_clients: int,
    num_rounds: int,
    wait_time_after_min_received: int,
    train_timeout: int,
    validation_timeout: int,
    model_test_after_each_round: bool,
    **component_ids: str,
) -> None:
    """Check the arguments every scatter-gather style workflow of ours takes (each named in its error)."""
    check_positive_int("min_clients", min_clients)
    check_positive_int("num_rounds", num_rounds)
    check_int("wait_time_after_min_received", wait_time_after_min_received, minimum=0)
    check_timeout_seconds("train_timeout", train_timeout, zero_means_none=True)
    check_timeout_seconds("validation_timeout", validation_timeout)
    check_bool("model_test_after_each_round", model_test_after_each_round)
    for name, value in component_ids.items():
        check_component_id(name, value)


class FlipScatterAndGather(ScatterAndGather):
    """ScatterAndGather plus FLIP's options.

    Training stops cleanly before its planned rounds (the model so far is validated and uploaded) when a site's
    update says its next one would exceed its privacy budget (GaussianPrivacy's ``max_epsilon``); the reason goes
    to the log, metrics.json and the report. A new global model that is not finite (the averaged update, or a
    server optimizer's step, overflowed it) ends the run in ERROR before it is saved or sent.

    Args:
        fedprox_mu: > 0 makes it FedProx: every train task carries ``mu`` and RUN_TRAINER adds the proximal term
            ``mu/2·||w − w_global||²`` to the user's loss (through the gradients; user code unchanged). Default 0.
        model_test_after_each_round: after each round, every participating site validates the new global model
            (RUN_VALIDATOR); the round waits for every site's answer, at most ``validation_timeout`` seconds (a site
            that did not answer is named in the log); the metrics go to metrics.json under the round. Default True
            (the DLR demonstrator's default).
        validation_timeout: seconds for those tests (>= 1). Default 600.
        Other arguments: as ScatterAndGather.
    """

    def __init__(
        self,
        min_clients: int = 1,
        num_rounds: int = 5,
        wait_time_after_min_received: int = 10,
        aggregator_id=ComponentId.AGGREGATOR,
        persistor_id=ComponentId.PERSISTOR,
        shareable_generator_id=ComponentId.SHAREABLE_GENERATOR,
        train_task_name=FlipTask.TRAIN,
        train_timeout: int = 0,
        fedprox_mu: float = 0.0,
        model_test_after_each_round: bool = True,
        validation_timeout: int = 600,
    ):
        check_rounds_args(
            min_clients=min_clients,
            num_rounds=num_rounds,
            wait_time_after_min_received=wait_time_after_min_received,
            train_timeout=train_timeout,
            validation_timeout=validation_timeout,
            model_test_after_each_round=model_test_after_each_round,
            aggregator_id=aggregator_id,
            persistor_id=persistor_id,
            shareable_generator_id=shareable_generator_id,
            train_task_name=train_task_name,
        )
        super().__init__(
            min_clients=min_clients,
            num_rounds=num_rounds,
            wait_time_after_min_received=wait_time_after_min_received,
            aggregator_id=aggregator_id,
            persistor_id=persistor_id,
            shareable_generator_id=shareable_generator_id,
            train_task_name=train_task_name,
            train_timeout=train_timeout,
        )
        self.fedprox_mu = check_mu(fedprox_mu)
        self.model_test_after_each_round = model_test_after_each_round
        self.validation_timeout = validation_timeout
        self._abort_signal: Signal | None = None
        self._stop_reason: str | None = None
        self._stops_after: int | None = None  # the round training stops after, once the stop reason is known

    def control_flow(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        self._abort_signal = abort_signal
        super().control_flow(abort_signal, fl_ctx)

    def _prepare_train_task_data(self, client_task: ClientTask, fl_ctx: FLContext) -> None:
        if self.fedprox_mu:
            client_task.task.data.set_header(FlipMeta.FEDPROX_MU, self.fedprox_mu)
        super()._prepare_train_task_data(client_task, fl_ctx)

    def handle_event(self, event_type: str, fl_ctx: FLContext):
        super().handle_event(event_type, fl_ctx)
        if event_type == AppEventType.AFTER_CONTRIBUTION_ACCEPT and fl_ctx.get_prop(AppConstants.AGGREGATION_ACCEPTED):
            current = fl_ctx.get_prop(AppConstants.CURRENT_ROUND, 0)
            reason = budget_exceeded_next(fl_ctx.get_prop(AppConstants.TRAINING_RESULT), peer_name(fl_ctx), current + 2)
            self._stop_reason = self._stop_reason or reason
        elif event_type == AppEventType.BEFORE_AGGREGATION and self._stop_reason and self._stops_after is None:
            # cut the rounds before aggregating, so this round is the last one for the aggregator (the ensemble
            # of last local models) and the persistor as well as for the round loop
            current = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
            if current < self._start_round + self._num_rounds - 1:
                self._num_rounds = current - self._start_round + 1
                fl_ctx.set_prop(AppConstants.NUM_ROUNDS, self._num_rounds, private=True, sticky=False)
                self._stops_after = current
        elif event_type == AppEventType.AFTER_SHAREABLE_TO_LEARNABLE:
            self._check_global_model(fl_ctx)
        elif event_type == AppEventType.ROUND_DONE and self._abort_signal:
            current = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
            if self.model_test_after_each_round:
                model = fl_ctx.get_prop(AppConstants.GLOBAL_MODEL)
                if model:
                    validate_at_sites(
                        self,
                        model[ModelLearnableKey.WEIGHTS],
                        current,
                        self.validation_timeout,
                        fl_ctx,
                        self._abort_signal,
                    )
            if self._stops_after == current:
                self.log_warning(fl_ctx, f"training stops after round {current + 1}: {self._stop_reason}")
                fl_ctx.set_prop(
                    FlipProp.STOP_REASON, f"after round {current + 1}: {self._stop_reason}", private=True, sticky=False
                )
                self.fire_event(FlipEvent.TRAINING_STOPPED, fl_ctx)

    def _check_global_model(self, fl_ctx: FLContext) -> None:
        """A global model that is not finite (the update overflowed it) ends the run in ERROR before it is saved."""
        model = fl_ctx.get_prop(AppConstants.GLOBAL_MODEL)
        if not model:
            return
        current = fl_ctx.get_prop(AppConstants.CURRENT_ROUND, 0)
        try:
            check_finite(model[ModelLearnableKey.WEIGHTS], f"round {current + 1}: the new global model")
        except NonFiniteModelError as exc:
            self.system_panic(f"{exc}: it is neither saved nor sent", fl_ctx)


def validate_at_sites(
    controller, weights: dict, round_num: int, timeout: int, fl_ctx: FLContext, abort_signal: Signal
) -> list[str]:
    """Send the round's global model to every participating site's validator and wait for every answer (DLR waits
    for all participants), at most ``timeout`` seconds; fire ROUND_VALIDATED for each answer, then
    ROUND_VALIDATION_DONE. A site that did not answer in time, or answered with an error, is named in the log.

    Returns:
        The sites that sent no usable answer (sorted).
    """
    sites = sorted(c.name for c in controller._engine.get_clients())
    data = DXO(data_kind=DataKind.WEIGHTS, data=weights).to_shareable()
    data.set_header(AppConstants.MODEL_OWNER, f"global_round_{round_num + 1}")
    answered: set[str] = set()

    def received(client_task: ClientTask, fl_ctx: FLContext) -> None:  # NVFlare passes these by name
        result, site = client_task.result, client_task.client.name
        client_task.result = None
        if not isinstance(result, Shareable) or result.get_return_code(ReturnCode.OK) != ReturnCode.OK:
            code = result.get_return_code() if isinstance(result, Shareable) else "no result"
            controller.log_warning(fl_ctx, f"round {round_num + 1}: per-round test at {site} failed ({code})")
            return
        try:
            metrics = from_shareable(result).data
        except (ValueError, TypeError):
            controller.log_warning(
                fl_ctx, f"round {round_num + 1}: {site} sent a validation result that is not a DXO: dropped"
            )
            return
        answered.add(site)
        fl_ctx.set_prop(AppConstants.DATA_CLIENT, site, private=True, sticky=False)
        fl_ctx.set_prop(FlipProp.ROUND_VALIDATION, metrics, private=True, sticky=False)
        fl_ctx.set_prop(AppConstants.CURRENT_ROUND, round_num, private=True, sticky=False)
        controller.fire_event(FlipEvent.ROUND_VALIDATED, fl_ctx)

    task = Task(name=FlipTask.VALIDATE, data=data, timeout=timeout, result_received_cb=received)
    controller.broadcast_and_wait(
        task=task, fl_ctx=fl_ctx, targets=sites, min_responses=len(sites), abort_signal=abort_signal
    )
    missing = missing_answers(sites, answered)
    if missing and not (abort_signal and abort_signal.triggered):
        controller.log_warning(
            fl_ctx,
            f"round {round_num + 1}: per-round test: no usable answer from "
            f"{', '.join(missing)} within {timeout} s ({len(answered)} of {len(sites)} "
            "sites tested the global model)",
        )
    fl_ctx.set_prop(AppConstants.CURRENT_ROUND, round_num, private=True, sticky=False)
    controller.fire_event(FlipEvent.ROUND_VALIDATION_DONE, fl_ctx)
    return missing


def missing_answers(sites: list[str], answered: set[str]) -> list[str]:
    """The participating sites that did not answer (sorted)."""
    return sorted(set(sites) - set(answered))
