"""The cohort's DICOM studies as (file, label) items, and a torch Dataset reading them with pydicom."""

import numpy as np
import pydicom
import torch
from torch.utils.data import Dataset

from flip.constants import ResourceType


def cohort_items(flip, project_id, dataframe):
    """Every DICOM file of every accession in the dataframe, with the accession's label, in accession order."""
    items = []
    for accession_id, label in zip(dataframe["accession_id"], dataframe["label"]):
        try:
            folder = flip.get_by_accession_number(project_id, accession_id, resource_type=[ResourceType.DICOM])
        except Exception as exc:  # noqa: BLE001 - a study the imaging service cannot give is skipped
            flip.logger.warning("study skipped: %s", type(exc).__name__)
            continue
        items.extend((str(path), int(label)) for path in sorted(folder.rglob("*.dcm")))
    return items


def split_items(items, val_split):
    """(train, validation): every k-th item validates, k = round(1 / val_split)."""
    every = max(2, round(1 / val_split))
    return [x for i, x in enumerate(items) if i % every], [x for i, x in enumerate(items) if not i % every]


class DicomDataset(Dataset):
    def __init__(self, items):
        self.items = list(items)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        path, label = self.items[index]
        pixels = pydicom.dcmread(path).pixel_array.astype(np.float32) / 255.0
        return torch.from_numpy(pixels)[None], label
