"""The cohort's NIfTI scans: <accession>/scans/input_*.nii.gz with their label_*.nii.gz."""

from flip.constants import ResourceType
from flip.utils import FLIPDataset


class SegmentationDataset(FLIPDataset):
    def __init__(self, flip, project_id, query, transform=None, part="train", val_split=0.25):
        self.part = part
        self.val_split = val_split
        super().__init__(flip, project_id, query, transform=transform)

    def _build_datalist(self, dataframe):
        items = []
        for accession_id in dataframe["accession_id"]:
            folder = self.flip.get_by_accession_number(
                self.project_id, accession_id, resource_type=[ResourceType.NIFTI]
            )
            for image in sorted(folder.rglob("input_*.nii.gz")):
                items.append({"image": str(image), "label": str(image).replace("/input_", "/label_")})
        every = max(2, round(1 / self.val_split))
        if self.part == "train":
            return [item for i, item in enumerate(items) if i % every]
        return [item for i, item in enumerate(items) if not i % every]
