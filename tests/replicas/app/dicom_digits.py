"""A FLIP-style app's data: the cohort from the trust's data-access service, each image from its imaging service.

Written against FLIP's API as a researcher's app is (``FLIP().get_dataframe``, ``get_by_accession_number``); used by
the prod end-to-end test (tests/e2e/test_prod_flip.py). ``PROJECT_ID`` and ``QUERY`` come from config.json.
"""

import json
import os
from pathlib import Path

import numpy as np
import pydicom
import torch

from flip import FLIP
from flip.constants import ResourceType
from flip.platform.site import current_site, set_current_site


def load_cohort(config: dict, site: str):
    """Return (images [N, 8, 8] in [0, 1], labels [N]) of this site's cohort, fetched through its trust."""
    if current_site() is None:  # flip's executors name the site (issue 16); this app does not rely on it
        set_current_site(site)
    dump = os.environ.get("E2E_ENV_DUMP")
    if dump:  # what the site's process holds, for the test's check that no hub key is among it
        Path(dump).mkdir(parents=True, exist_ok=True)
        (Path(dump) / f"{site}-{os.getpid()}.json").write_text(json.dumps(dict(os.environ)))
    flip = FLIP()
    frame = flip.get_dataframe(config["PROJECT_ID"], config["QUERY"])
    images, labels = [], []
    for accession, label in zip(frame["accession_id"], frame["label"]):
        folder = flip.get_by_accession_number(config["PROJECT_ID"], accession, ResourceType.DICOM)
        files = sorted(folder.rglob("*.dcm"))
        if len(files) != 1:
            raise FileNotFoundError(f"expected one DICOM file for an accession, found {len(files)}")
        images.append(pydicom.dcmread(files[0]).pixel_array.astype(np.float32) / 16.0)
        labels.append(int(label))
    return torch.from_numpy(np.stack(images)), torch.tensor(labels, dtype=torch.int64)


def split(images, labels, every: int = 5):
    """Every ``every``-th image is kept for local validation."""
    index = torch.arange(len(labels))
    val = index % every == 0
    return images[~val], labels[~val], images[val], labels[val]
