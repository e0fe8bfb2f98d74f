"""MONAI transforms of a (NIfTI image, NIfTI label) pair."""

from monai.transforms import Compose, EnsureChannelFirstd, EnsureTyped, LoadImaged, ScaleIntensityd


def get_transforms():
    return Compose(
        [
            LoadImaged(keys=["image", "label"], image_only=True),
            EnsureChannelFirstd(keys=["image", "label"]),
            ScaleIntensityd(keys="image"),
            EnsureTyped(keys=["image", "label"]),
        ]
    )
