"""Trial hospitals' image stores: the demo's digits, split non-IID, as each named site's image store
(``<dir>/cohorts/<site>/``), under the provisioned names (``flip trial data``); a folder that is not empty and not its
own is refused (the demo's marker rule, :func:`flip.demo.run.prepare_workdir`).
"""

from __future__ import annotations

from pathlib import Path

from flip.demo.data import write_cohorts
from flip.demo.run import prepare_workdir
from flip.provisioning import check_site_names


def write_trial_data(sites: list[str], folder: str | Path) -> dict[str, int]:
    """Write each site's digits under ``folder/cohorts/<site>/``; return the images per site.

    Raises:
        FlipError: ``folder`` is not empty and was not made by this command or the demo.
        ValueError: a bad site name.
    """
    check_site_names(sites)
    path = prepare_workdir(folder, owner="flip trial data", command="`flip trial data`")
    return write_cohorts(path, sites)
