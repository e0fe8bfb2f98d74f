"""The site's cohort: the dataframe's accession ids and labels, one DICOM image per accession."""

import numpy as np
import pydicom
import torch

from flip.constants import ResourceType


def load_cohort(flip, project_id: str, dataframe):
    """Return (images [N, 8, 8] in [0, 1], labels [N]) of every DICOM file of every accession in ``dataframe``."""
    images, labels = [], []
    for accession_id, label in zip(dataframe["accession_id"], dataframe["label"]):
        try:
            folder = flip.get_by_accession_number(project_id, accession_id, resource_type=[ResourceType.DICOM])
        except Exception as exc:  # noqa: BLE001 - an accession the imaging service cannot give is skipped, as FLIP's
            flip.logger.warning("an accession's images are not available (%s): skipped", type(exc).__name__)
            continue
        for path in sorted(folder.rglob("*.dcm")):
            images.append(pydicom.dcmread(path).pixel_array.astype(np.float32) / 255.0)
            labels.append(int(label))
    if not images:
        raise FileNotFoundError("no DICOM images for the cohort's accessions")
    return torch.from_numpy(np.stack(images)), torch.tensor(labels, dtype=torch.int64)


def train_val_split(images, labels, every: int):
    """Every ``every``-th image is kept for local validation."""
    index = torch.arange(len(labels))
    val = index % every == 0
    return images[~val], labels[~val], images[val], labels[val]
