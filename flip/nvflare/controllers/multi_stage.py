"""MultiStageScatterAndGather: scatter-gather rounds in stages (e.g. a diffusion model trained in two parts)."""

from __future__ import annotations

from nvflare.apis.controller_spec import ClientTask
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType

from flip.checks import check_component_id, check_path_name, check_positive_int
from flip.constants import ComponentId, FlipMeta, FlipTask
from flip.nvflare.controllers.training import FlipScatterAndGather

#: a stage's keys: required, and optional (its own train task name, as FLIP's diffusion jobs have train_ae, train_dm)
_STAGE_KEYS = {"name", "num_rounds"}
_STAGE_TASK = "train_task_name"


def check_stages(stages) -> list[dict]:
    """Return ``stages`` if it is a non-empty list of ``{"name": str, "num_rounds": int >= 1}`` (optionally with
    ``"train_task_name"``, a task name), names distinct."""
    if not isinstance(stages, list) or not stages:
        raise ValueError(f"stages must be a non-empty list of {{'name': ..., 'num_rounds': ...}}, got {stages!r}")
    names = []
    for i, stage in enumerate(stages):
        if not isinstance(stage, dict) or not _STAGE_KEYS <= set(stage) <= _STAGE_KEYS | {_STAGE_TASK}:
            raise ValueError(
                f"stages[{i}] must be {{'name': ..., 'num_rounds': ...}} (and optionally "
                f"'{_STAGE_TASK}'), got {stage!r}"
            )
        names.append(check_path_name(f"stages[{i}].name", stage["name"]))
        check_positive_int(f"stages[{i}].num_rounds", stage["num_rounds"])
        if _STAGE_TASK in stage:
            check_component_id(f"stages[{i}].{_STAGE_TASK}", stage[_STAGE_TASK])
    if len(set(names)) != len(names):
        raise ValueError(f"stage names must be distinct, got {names}")
    return stages


class MultiStageScatterAndGather(FlipScatterAndGather):
    """ScatterAndGather (with FLIP's options), every train task carrying its stage.

    Rounds run stage after stage (``stages[0]["num_rounds"]`` rounds of the first, then the next...). Each
    task's data carries the headers ``flip_stage`` (the stage's name), ``flip_stage_round`` (0-based within the
    stage) and ``flip_stage_rounds``; RUN_TRAINER gives the stage to the user's trainer (``ctx.stage``) and sends
    back only that stage's parameters, which StagePercentilePrivacy filters with the stage's own threshold.

    A stage may name its own train task (``"train_task_name"``): FLIP's diffusion apps run two trainer instances,
    one for ``train_ae`` and one for ``train_dm`` (each site maps each task name to its RUN_TRAINER). Without it
    the stage's task is ``train_task_name``.

    Args:
        stages: ``[{"name": "stage1", "num_rounds": 3}, {"name": "stage2", "num_rounds": 2}]``, or with task names
            ``[{"name": "ae", "num_rounds": 2, "train_task_name": "train_ae"}, ...]``.
        Other arguments: as FlipScatterAndGather (``num_rounds`` is the sum of the stages' rounds).
    """

    def __init__(
        self,
        stages: list[dict],
        min_clients: int = 1,
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
        self.stages = check_stages(stages)
        super().__init__(
            min_clients=min_clients,
            num_rounds=sum(s["num_rounds"] for s in stages),
            wait_time_after_min_received=wait_time_after_min_received,
            aggregator_id=aggregator_id,
            persistor_id=persistor_id,
            shareable_generator_id=shareable_generator_id,
            train_task_name=train_task_name,
            train_timeout=train_timeout,
            fedprox_mu=fedprox_mu,
            model_test_after_each_round=model_test_after_each_round,
            validation_timeout=validation_timeout,
        )
        self._default_task_name = train_task_name

    def stage_of(self, round_num: int) -> tuple[str, int, int]:
        """(stage name, round within the stage, rounds of the stage) of a 0-based global round."""
        stage, within = self._stage(round_num)
        return stage["name"], within, stage["num_rounds"]

    def _stage(self, round_num: int) -> tuple[dict, int]:
        for stage in self.stages:
            if round_num < stage["num_rounds"]:
                return stage, round_num
            round_num -= stage["num_rounds"]
        raise ValueError(f"round {round_num} is past the last stage")

    def task_name_of(self, round_num: int) -> str:
        """The train task's name in a 0-based global round: its stage's ``train_task_name``, else the workflow's."""
        return self._stage(round_num)[0].get(_STAGE_TASK, self._default_task_name)

    def handle_event(self, event_type: str, fl_ctx: FLContext):
        if event_type == AppEventType.ROUND_STARTED:
            # ScatterAndGather fires ROUND_STARTED just before it builds the round's task from train_task_name
            current = fl_ctx.get_prop(AppConstants.CURRENT_ROUND, 0)
            name = self.task_name_of(current)
            if name != self.train_task_name:
                self.log_info(fl_ctx, f"round {current + 1}: stage {self.stage_of(current)[0]}, task {name}")
            self.train_task_name = name
        super().handle_event(event_type, fl_ctx)

    def _prepare_train_task_data(self, client_task: ClientTask, fl_ctx: FLContext) -> None:
        data = client_task.task.data
        stage, stage_round, stage_rounds = self.stage_of(data.get_header(AppConstants.CURRENT_ROUND, 0))
        data.set_header(FlipMeta.STAGE, stage)
        data.set_header(FlipMeta.STAGE_ROUND, stage_round)
        data.set_header(FlipMeta.STAGE_ROUNDS, stage_rounds)
        super()._prepare_train_task_data(client_task, fl_ctx)
