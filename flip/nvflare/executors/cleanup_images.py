"""CleanupImages: delete the images fetched for a run, at its start (clean slate) and at its end."""

from __future__ import annotations

import shutil
from pathlib import Path

from nvflare.apis.event_type import EventType
from nvflare.apis.executor import Executor
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal

from flip import FLIP
from flip.constants import FlipMeta, FlipTask
from flip.errors import FlipError
from flip.nvflare.utils import log_site_failure


def delete_images(folder: Path) -> int:
    """Delete ``folder`` (the run's image folder at this site) and return how many files it held."""
    if not folder.exists() and not folder.is_symlink():
        return 0
    if folder.is_symlink():
        folder.unlink()
        return 0
    count = sum(1 for p in folder.rglob("*") if not p.is_dir())
    shutil.rmtree(folder)
    return count


class CleanupImages(Executor):
    """Delete the images downloaded for training at this site, so a run starts clean and disks do not fill.

    Runs at the start of a run (the ``init_training`` task: removes leftovers of an earlier attempt of the
    same job) and at its end (END_RUN, whether the run succeeded, failed or was aborted). The folder is the
    one the platform gives for (site, job): ``FLIP_LOCAL_DIR/images/<site>/<job_id>`` on the dev platform.
    In the simulator, run with ``end_run_for_all`` so END_RUN reaches every site.
    """

    def __init__(self):
        super().__init__()
        self.platform = None

    def _images_dir(self, fl_ctx: FLContext) -> Path:
        if self.platform is None:
            self.platform = FLIP()
        return self.platform.site_images_dir(fl_ctx.get_identity_name(), fl_ctx.get_job_id())

    def clean(self, fl_ctx: FLContext, when: str) -> int:
        folder = self._images_dir(fl_ctx)
        count = delete_images(folder)
        self.log_info(fl_ctx, f"{when}: removed {count} image files of this run")
        return count

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        if task_name != FlipTask.INIT_TRAINING:
            return make_reply(ReturnCode.TASK_UNKNOWN)
        try:
            self.clean(fl_ctx, "run start")
        except (FlipError, OSError, ValueError) as exc:
            reply = make_reply(ReturnCode.EXECUTION_EXCEPTION)
            reply.set_header(FlipMeta.ERROR_REASON, self.failed(fl_ctx, "run start", exc))
            return reply
        return make_reply(ReturnCode.OK)

    def failed(self, fl_ctx: FLContext, when: str, exc: BaseException) -> str:
        """Log a failed cleanup and return its short reason: only the error's type is logged at error level or
        leaves the site (an exception's text names image paths, which may name patients); the rest is debug."""
        return log_site_failure(self, fl_ctx, when, f"cannot clean the run's images ({type(exc).__name__})", exc)

    def handle_event(self, event_type: str, fl_ctx: FLContext):
        if event_type == EventType.END_RUN:
            try:
                self.clean(fl_ctx, "run end")
            except (FlipError, OSError, ValueError) as exc:
                self.failed(fl_ctx, "run end", exc)
