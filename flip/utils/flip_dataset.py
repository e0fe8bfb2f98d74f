"""``FLIPDataset``: a MONAI dataset built from the project's cohort (FLIP: flip/utils/flip_dataset.py)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from monai.data import Dataset


class FLIPDataset(Dataset, ABC):
    """A ``monai.data.Dataset`` whose items come from the project's dataframe, fetched once, in the constructor.

    Subclasses implement :meth:`_build_datalist` (dataframe -> list of dicts, each with at least ``"image"``);
    their own constructor arguments must be set before calling this constructor, which calls it.

    Args:
        flip: the platform (``FLIP()``): its ``get_dataframe(project_id, query)`` gives the cohort.
        project_id: the project's id.
        query: the cohort query.
        transform: MONAI transform applied to each item (None: the items as built).

    Raises:
        TypeError: ``_build_datalist`` returned something that is not a list or tuple of dicts.
    """

    def __init__(self, flip: Any, project_id: str, query: str, transform: Callable | None = None):
        self.flip = flip
        self.project_id = project_id
        self.query = query
        dataframe = flip.get_dataframe(project_id, query)
        datalist = self._build_datalist(dataframe)
        if not isinstance(datalist, (list, tuple)) or not all(isinstance(item, dict) for item in datalist):
            raise TypeError(
                f"{type(self).__name__}._build_datalist must return a list of dicts, got {type(datalist).__name__}"
            )
        super().__init__(data=list(datalist), transform=transform)

    @abstractmethod
    def _build_datalist(self, dataframe: Any) -> Sequence[dict]:
        """Return the dataset's items from the cohort's dataframe: dicts with at least ``"image"`` (a path)."""
