"""The demo's hospitals: scikit-learn's 8x8 digits (shipped with the package, offline) as images.

Each site gets a non-IID share (mostly the digits ``label % n_sites == site index``), written either as
``<local_dir>/cohorts/<site>/<label>/<n>.png`` (the dev platform's image store, for apps of our plain contract) or
as FLIP's dev data (for FLIP apps): a dataframe of accession ids and labels and one DICOM file per accession,
``<root>/<site>/dataframe.csv`` and ``<root>/<site>/images/<accession_id>/image.dcm``.
A held-out 20% is never given to any site; tests and the demo's summary score the final model on it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

HOLDOUT_FRACTION = 0.2
PREFERRED_SHARE = 0.75


def to_pixels(x: np.ndarray) -> np.ndarray:
    """digits values 0..16 -> uint8 grey levels, as written to the PNG files."""
    return np.rint(np.asarray(x, dtype=np.float64) * (255.0 / 16.0)).astype(np.uint8)


def as_model_input(x: np.ndarray) -> np.ndarray:
    """digits values 0..16 -> the [0, 1] floats the demo's trainer reads back from its PNG files."""
    return to_pixels(x).astype(np.float32).reshape(-1, 8, 8) / 255.0


def split_digits(site_names: list[str], seed: int = 0) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], tuple]:
    """Split digits into a non-IID share per site and a held-out set.

    Returns:
        ({site: (images [n, 64] in 0..16, labels [n])}, (holdout_images, holdout_labels))
    """
    from sklearn.datasets import load_digits

    if not site_names:
        raise ValueError("site_names must name at least one site")
    digits = load_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(digits.target))
    n_holdout = int(len(order) * HOLDOUT_FRACTION)
    holdout, train = order[:n_holdout], order[n_holdout:]
    n_sites = len(site_names)
    owner = np.empty(len(train), dtype=np.int64)
    for i, idx in enumerate(train):
        preferred = int(digits.target[idx]) % n_sites
        if n_sites == 1 or rng.random() < PREFERRED_SHARE:
            owner[i] = preferred
        else:
            owner[i] = rng.choice([s for s in range(n_sites) if s != preferred])
    shares = {
        name: (digits.data[train[owner == s]], digits.target[train[owner == s]]) for s, name in enumerate(site_names)
    }
    return shares, (digits.data[holdout], digits.target[holdout])


def write_cohorts(local_dir: Path, site_names: list[str], seed: int = 0) -> dict[str, int]:
    """Write each site's share as PNG images under ``<local_dir>/cohorts/<site>/``; return images per site."""
    shares, _ = split_digits(site_names, seed)
    counts = {}
    for site, (images, labels) in shares.items():
        folder = Path(local_dir) / "cohorts" / site
        for n, (image, label) in enumerate(zip(images, labels)):
            target = folder / str(int(label)) / f"{n:05d}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(to_pixels(image).reshape(8, 8), mode="L").save(target)
        counts[site] = len(labels)
    return counts


#: the columns of a FLIP dev dataframe the demo writes
ACCESSION_COLUMN, LABEL_COLUMN = "accession_id", "label"
DATAFRAME_FILE, IMAGES_DIR, DICOM_FILE = "dataframe.csv", "images", "image.dcm"


class DicomWriter:
    """Write 2-D uint8 images as DICOM secondary-capture files (pydicom), MONOCHROME2, without patient data.

    One dataset is built once and each file sets its own UIDs (derived from the accession id: the same input
    gives the same file), accession number and pixels (3x faster than building a dataset per file).
    """

    def __init__(self):
        from pydicom.dataset import FileDataset, FileMetaDataset
        from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset("image.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.Modality = SecondaryCaptureImageStorage, "OT"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        self.dataset = ds

    def write(self, path: Path, pixels: np.ndarray, accession_id: str) -> None:
        """Write ``pixels`` (a 2-D uint8 array) to ``path`` as the image of accession ``accession_id``."""
        from pydicom.uid import generate_uid

        pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
        if pixels.ndim != 2:
            raise ValueError(f"pixels must be a 2-D array, got shape {pixels.shape}")
        ds = self.dataset
        uid = generate_uid(entropy_srcs=["flip-demo", accession_id])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = uid
        ds.StudyInstanceUID = ds.SeriesInstanceUID = generate_uid(entropy_srcs=["flip-demo-study", accession_id])
        ds.AccessionNumber = accession_id
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelData = pixels.tobytes()
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(str(path), enforce_file_format=True)


def write_flip_cohorts(
    root: Path, site_names: list[str], seed: int = 0, classes: list[int] | None = None, per_site: int | None = None
) -> dict[str, tuple[Path, Path]]:
    """Write each site's share as FLIP's dev data: ``<root>/<site>/dataframe.csv`` (``accession_id,label``) and
    ``<root>/<site>/images/<accession_id>/image.dcm`` (the digit's 8x8 grey levels, as the PNG files hold them).

    Args:
        root: the folder to write under.
        site_names: the sites.
        seed: the split's seed (the same as :func:`write_cohorts`'s: the same digits per site).
        classes: only these digits (default: all ten).
        per_site: at most this many images per site (default: all of the site's share).

    Returns:
        ``{site: (dataframe CSV, image root)}``, what ``flip simulate --site-data`` takes.
    """
    shares, _ = split_digits(site_names, seed)
    writer = DicomWriter()
    written = {}
    for index, (site, (images, labels)) in enumerate(shares.items(), start=1):
        folder = Path(root) / site
        keep = [i for i, label in enumerate(labels) if classes is None or int(label) in classes][:per_site]
        rows = [f"{ACCESSION_COLUMN},{LABEL_COLUMN}"]
        for n in keep:
            accession_id = f"ACC{index:02d}{n:05d}"
            writer.write(
                folder / IMAGES_DIR / accession_id / DICOM_FILE, to_pixels(images[n]).reshape(8, 8), accession_id
            )
            rows.append(f"{accession_id},{int(labels[n])}")
        (folder / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
        (folder / DATAFRAME_FILE).write_text("\n".join(rows) + "\n")
        written[site] = (folder / DATAFRAME_FILE, folder / IMAGES_DIR)
    return written


def holdout_accuracy(state_dict, seed: int = 0, app_dir: Path | None = None) -> float:
    """Accuracy on the held-out digits of the demo model (``app_dir``'s models.py) with ``state_dict`` loaded."""
    import importlib.util

    import torch

    models = Path(app_dir or Path(__file__).parent / "app") / "models.py"
    spec = importlib.util.spec_from_file_location(f"flip_demo_models_{models.parent.name}", models)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.get_model()
    model.load_state_dict(state_dict)
    model.eval()
    _, (x, y) = split_digits(["site-1", "site-2"], seed)  # the held-out set does not depend on the sites
    with torch.no_grad():
        predicted = model(torch.from_numpy(as_model_input(x))).argmax(1).numpy()
    return float((predicted == y).mean())
