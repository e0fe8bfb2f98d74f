"""FedDCController: FedDC's daisy chain on NVFlare: local models travel between aggregations."""

from __future__ import annotations

import time

from nvflare.apis.controller_spec import ClientTask, Task
from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.fl_context import FLContext
from nvflare.apis.signal import Signal
from nvflare.app_common.abstract.model import ModelLearnableKey, make_model_learnable
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType
from nvflare.app_opt.pt.file_model_persistor import PTFileModelPersistor

from flip.checks import check_int, check_positive_int
from flip.constants import ComponentId, FlipMeta, FlipProp, FlipTask
from flip.errors import FlipError, LookupFailed, NonFiniteModelError
from flip.methods.feddc import daisy_chain, is_aggregation_round, training_rounds
from flip.methods.weighted import checksum, weighted_mean
from flip.nvflare.components.sample_weighted_aggregator import SampleWeightedAggregator, reconstruct
from flip.nvflare.controllers.base import FlipController
from flip.nvflare.controllers.training import check_rounds_args, validate_at_sites
from flip.nvflare.utils import get_component


class FedDCController(FlipController):
    """FedDC (Kamp et al., ICLR 2023): sites train; every ``daisy_chain_period`` rounds the server averages the
    local models weighted by samples; in the rounds between, each site gets another site's local model to
    continue, following a seeded permutation with no site getting its own model back.

    Rounds are counted as the DLR demonstrator counts them: ``num_rounds`` is the number of aggregations (DLR's
    ``target_num_updates``) and the run trains ``num_rounds × daisy_chain_period`` rounds (DLR multiplies its target
    by the period), so the same settings give the same number of aggregations and local trainings in both.

    Updates pass the SampleWeightedAggregator's checks (its limits on samples and update norms included); a site
    whose update is excluded keeps its model; an average that is not finite ends the run in ERROR. Every
    round's routing, whether it aggregated, and fingerprints of the models sent and received go to metrics.json.

    Args:
        num_rounds: aggregations (>= 1); the run trains num_rounds × daisy_chain_period rounds. Default 5.
        daisy_chain_period: training rounds per aggregation (>= 1; 1 is FedAvg). Default 2.
        min_clients: sites that must train in each round (>= 1). Default 1.
        seed: the permutations' seed. Default 0.
        model_test_after_each_round: after each aggregation, every site validates the new global model (the round
            waits for every site's answer, at most validation_timeout seconds). Default True.
        train_timeout, validation_timeout: seconds (0: no timeout for training). Defaults 0 and 600.
    """

    late_result_note = ": it is stale"

    def __init__(
        self,
        num_rounds: int = 5,
        daisy_chain_period: int = 2,
        min_clients: int = 1,
        seed: int = 0,
        aggregator_id: str = ComponentId.AGGREGATOR,
        persistor_id: str = ComponentId.PERSISTOR,
        train_timeout: int = 0,
        model_test_after_each_round: bool = True,
        validation_timeout: int = 600,
    ):
        super().__init__()
        check_rounds_args(
            min_clients=min_clients,
            num_rounds=num_rounds,
            wait_time_after_min_received=0,
            train_timeout=train_timeout,
            validation_timeout=validation_timeout,
            model_test_after_each_round=model_test_after_each_round,
            aggregator_id=aggregator_id,
            persistor_id=persistor_id,
        )
        self.num_rounds = num_rounds
        self.daisy_chain_period = check_positive_int("daisy_chain_period", daisy_chain_period)
        self.min_clients = min_clients
        self.seed = check_int("seed", seed)
        self.aggregator_id = aggregator_id
        self.persistor_id = persistor_id
        self.train_timeout = train_timeout
        self.model_test_after_each_round = model_test_after_each_round
        #: training rounds: DLR's count (target number of updates × daisy-chain period)
        self.training_rounds = training_rounds(num_rounds, self.daisy_chain_period)
        self.validation_timeout = validation_timeout
        self.aggregator: SampleWeightedAggregator | None = None
        self.persistor: PTFileModelPersistor | None = None

    def start_controller(self, fl_ctx: FLContext) -> None:
        try:
            self.aggregator = get_component(fl_ctx, self.aggregator_id, SampleWeightedAggregator, "aggregator")
            self.persistor = get_component(fl_ctx, self.persistor_id, PTFileModelPersistor, "persistor")
        except LookupFailed as exc:
            self.system_panic(f"FedDCController: {exc}", fl_ctx)

    def control_flow(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        learnable = self.persistor.load(fl_ctx)
        sites = sorted(c.name for c in self._engine.get_clients())
        if len(sites) < self.min_clients:
            self.system_panic(f"FedDC: min_clients is {self.min_clients} but only {len(sites)} sites joined", fl_ctx)
            return
        models = {site: learnable[ModelLearnableKey.WEIGHTS] for site in sites}
        fl_ctx.set_prop(AppConstants.NUM_ROUNDS, self.training_rounds, private=True, sticky=True)
        fl_ctx.set_prop(AppConstants.START_ROUND, 0, private=True, sticky=True)
        self.log_info(
            fl_ctx,
            f"FedDC: {self.num_rounds} aggregations, every {self.daisy_chain_period} rounds: "
            f"{self.training_rounds} training rounds",
        )
        self.fire_event(AppEventType.TRAINING_STARTED, fl_ctx)
        for round_num in range(self.training_rounds):
            if abort_signal.triggered:
                return
            fl_ctx.set_prop(AppConstants.CURRENT_ROUND, round_num, private=True, sticky=True)
            fl_ctx.set_prop(AppConstants.GLOBAL_MODEL, learnable, private=True, sticky=True)
            self.fire_event(AppEventType.ROUND_STARTED, fl_ctx)
            self.aggregator.reset(fl_ctx)
            self.aggregator.bases = models
            self._train(models, round_num, abort_signal, fl_ctx)
            if abort_signal.triggered:
                return
            try:
                self.aggregator.check_enough(fl_ctx)
            except FlipError as exc:
                self.system_panic(str(exc), fl_ctx)
                return
            accepted = self.aggregator.accepted
            local = {s: reconstruct(models[s], accepted[s][0]) if s in accepted else models[s] for s in sites}
            report = {
                "aggregated": is_aggregation_round(round_num, self.daisy_chain_period, self.training_rounds),
                "sent_checksums": {s: checksum(models[s]) for s in sites},
                "local_checksums": {s: checksum(local[s]) for s in sites},
            }
            if report["aggregated"]:
                try:
                    merged = weighted_mean([(local[s], accepted[s][1]) for s in sorted(accepted)])
                except NonFiniteModelError as exc:
                    self.system_panic(
                        f"round {round_num + 1}: {exc}: the average of the local models is refused", fl_ctx
                    )
                    return
                learnable = make_model_learnable(merged, {})
                models = {s: merged for s in sites}
                self.persistor.save(learnable, fl_ctx)
                fl_ctx.set_prop(AppConstants.GLOBAL_MODEL, learnable, private=True, sticky=True)
                report["global_checksum"] = checksum(merged)
                self.aggregator.finish_round(fl_ctx, members={s: local[s] for s in sorted(accepted)})
                self.log_info(fl_ctx, f"round {round_num + 1}: averaged {len(accepted)} local models")
            else:
                routing = daisy_chain(sites, self.seed, round_num)
                models = {receiver: local[sender] for receiver, sender in routing.items()}
                report["routing"] = routing
                self.aggregator.finish_round(fl_ctx)
                self.log_info(
                    fl_ctx,
                    f"round {round_num + 1}: daisy chain " + ", ".join(f"{s}→{r}" for r, s in sorted(routing.items())),
                )
            fl_ctx.set_prop(FlipProp.FEDDC_REPORT, report, private=True, sticky=False)
            self.fire_event(AppEventType.ROUND_DONE, fl_ctx)
            if report["aggregated"] and self.model_test_after_each_round:
                validate_at_sites(
                    self, learnable[ModelLearnableKey.WEIGHTS], round_num, self.validation_timeout, fl_ctx, abort_signal
                )
        self.aggregator.bases = None

    def _train(self, models: dict, round_num: int, abort_signal: Signal, fl_ctx: FLContext) -> None:
        for site, weights in models.items():
            data = DXO(data_kind=DataKind.WEIGHTS, data=weights).to_shareable()
            data.set_header(AppConstants.CURRENT_ROUND, round_num)
            data.set_header(AppConstants.NUM_ROUNDS, self.training_rounds)
            data.set_header(FlipMeta.REPORT_CHECKSUM, True)
            data.add_cookie(AppConstants.CONTRIBUTION_ROUND, round_num)
            task = Task(
                name=FlipTask.TRAIN, data=data, timeout=self.train_timeout, result_received_cb=self._result_received
            )
            self.broadcast(task=task, fl_ctx=fl_ctx, targets=[site], min_responses=1)
        while self.get_num_standing_tasks() and not abort_signal.triggered:
            time.sleep(0.2)

    def _result_received(self, client_task: ClientTask, fl_ctx: FLContext) -> None:
        result = client_task.result
        fl_ctx.set_prop(AppConstants.TRAINING_RESULT, result, private=True, sticky=False)
        self.fire_event(AppEventType.BEFORE_CONTRIBUTION_ACCEPT, fl_ctx)
        accepted = self.aggregator.accept(result, fl_ctx)
        fl_ctx.set_prop(AppConstants.AGGREGATION_ACCEPTED, accepted, private=True, sticky=False)
        self.fire_event(AppEventType.AFTER_CONTRIBUTION_ACCEPT, fl_ctx)
        client_task.result = None
