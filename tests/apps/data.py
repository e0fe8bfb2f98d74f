"""Data for the FLIP-style test apps: FLIP's dev data per site (a dataframe CSV and <accession_id>/ folders).

DICOM digits come from flip.demo.data.write_flip_cohorts; the segmentation apps get small synthetic NIfTI volumes:
a noisy ball in a cube, its mask as the label (``<accession_id>/scans/input_0.nii.gz`` and ``label_0.nii.gz``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

APPS = Path(__file__).resolve().parent
DICOM_APP, SEGMENTATION_APP, EVALUATION_APP = (
    APPS / "dicom_classifier",
    APPS / "monai_segmentation",
    APPS / "unet_evaluation",
)


def write_dicom_cohorts(root: Path, sites: list[str], per_site: int = 24) -> dict[str, tuple[Path, Path]]:
    """Digits 0-2 as DICOM files (at most ``per_site`` per site) and each site's dataframe (accession_id, label)."""
    from flip.demo.data import write_flip_cohorts

    return write_flip_cohorts(root, sites, classes=[0, 1, 2], per_site=per_site)


def write_nifti_cohorts(
    root: Path, sites: list[str], per_site: int = 4, size: int = 16, seed: int = 0
) -> dict[str, tuple[Path, Path]]:
    """``per_site`` volumes of ``size``^3 voxels per site; returns ``{site: (dataframe CSV, image root)}``."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(size)] * 3, indexing="ij"), axis=-1).astype(np.float32)
    written = {}
    for index, site in enumerate(sites, start=1):
        folder = Path(root) / site
        rows = ["accession_id"]
        for n in range(per_site):
            accession_id = f"SEG{index:02d}{n:03d}"
            scans = folder / "images" / accession_id / "scans"
            scans.mkdir(parents=True)
            center = rng.uniform(size * 0.35, size * 0.65, 3)
            mask = (np.linalg.norm(grid - center, axis=-1) <= rng.uniform(size * 0.15, size * 0.3)).astype(np.float32)
            image = mask + rng.normal(0.0, 0.3, mask.shape).astype(np.float32)
            nib.save(nib.Nifti1Image(image, np.eye(4)), scans / "input_0.nii.gz")
            nib.save(nib.Nifti1Image(mask, np.eye(4)), scans / "label_0.nii.gz")
            rows.append(accession_id)
        (folder / "dataframe.csv").write_text("\n".join(rows) + "\n")
        written[site] = (folder / "dataframe.csv", folder / "images")
    return written
