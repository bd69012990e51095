# SPDX-License-Identifier: GPL-3.0-or-later
"""The virtual powder pattern: Bragg peak intensities summed in the assembled image."""

import numpy as np


class VirtualPowderPattern:
    """Sum of peak intensities at the peaks' pixels of the geometry-assembled image.

    Args:
        shape: (rows, columns) of the assembled image.
    """

    def __init__(self, shape: tuple[int, int]) -> None:
        self.image = np.zeros(shape, dtype=np.float32)

    def reset(self) -> None:
        """Clears the pattern."""
        self.image[:] = 0

    def add(self, pixels: np.ndarray, intensity: np.ndarray) -> None:
        """Adds peaks: integer indices (n,) of their pixels in the flattened assembled image
        (``DetectorGeometry.assembled_flat_index``) and their intensities (n,)."""
        # One flat index: numpy's fast path of add.at (a tuple of index arrays takes the
        # general, twice slower one).
        np.add.at(self.image.reshape(-1), pixels, intensity.astype(np.float32))
