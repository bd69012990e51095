# SPDX-License-Identifier: GPL-3.0-or-later
"""Where the simulator's raw JUNGFRAU frames come from: an HDF5 file or the synthetic detector."""

import pathlib

import h5py
import numpy as np

from om.simulation.jungfrau_frames import SyntheticJungfrau

FRAME_SHAPE = (1024, 1024)


class HDF5FrameSource:
    """Raw frames from an HDF5 dataset, cycled.

    A dataset of shape (n, 512, 1024) holds single-module frames: each frame is sent as every
    module (e.g. the real module of ``jungfrau_module_real.h5`` as both modules of a 1M); a
    dataset of shape (n, 1024, 1024) holds whole 1M frames.

    Args:
        filename: the HDF5 file.
        dataset: the dataset of uint16 raw words.

    Raises:
        ValueError: naming the file and dataset when the dataset is missing or of the wrong
            dtype or shape.
    """

    def __init__(self, filename: str, dataset: str = "raw") -> None:
        self.filename = str(filename)
        with h5py.File(filename, "r") as handle:
            if dataset not in handle:
                raise ValueError(f"{filename}: no dataset {dataset!r}")
            frames = handle[dataset][()]
        if frames.dtype != np.uint16 or frames.ndim != 3 or frames.shape[2] != 1024 or (
            frames.shape[1] not in (512, 1024)
        ):
            raise ValueError(f"{filename}/{dataset}: need uint16 (n, 512 or 1024, 1024) raw words, "
                             f"got {frames.dtype} {frames.shape}")
        if frames.shape[1] == 512:
            frames = np.concatenate([frames, frames], axis=1)
        self._frames = np.ascontiguousarray(frames)

    def __len__(self) -> int:
        return self._frames.shape[0]

    def frame(self, index: int) -> np.ndarray:
        """Returns raw frame ``index`` modulo the number of frames: uint16 (1024, 1024)."""
        return self._frames[index % len(self)]

    def write_calibration(self, directory: pathlib.Path) -> tuple[list[str], list[str]] | None:
        """Writes OM-layout calibration files from the file's ``pedestal`` and
        ``gain_adu_per_photon`` datasets (as in ``jungfrau_module_real.h5``), one per module.

        Returns:
            (dark files, gain files), or None when the file has no calibration.
        """
        from om.data_retrieval_layer.jungfrau_calibration_files import write_calibration_files

        with h5py.File(self.filename, "r") as handle:
            if "pedestal" not in handle or "gain_adu_per_photon" not in handle:
                return None
            pedestal = handle["pedestal"][()].astype(np.float32)
            gain = handle["gain_adu_per_photon"][()].astype(np.float64)
            energy_kev = float(handle.attrs.get("photon_energy_eV", 12400.0)) / 1000.0
        if pedestal.ndim == 3:  # one module's constants: the same for every module
            pedestal, gain = np.stack([pedestal, pedestal]), np.stack([gain, gain])
        return write_calibration_files(directory, pedestals_adc=pedestal,
                                       gains_adu_per_kev=gain / energy_kev,
                                       pedestal_convention="adc")


class SyntheticFrameSource:
    """Synthetic raw frames of a simulated JUNGFRAU 1M, a pool of them made once and cycled.

    Args:
        pool_size: how many distinct frames to make (making one takes tens of ms).
        hit_fraction: the fraction of frames with Bragg spots.
        seed: the seed of the simulated detector and frames.
        dark_stage: None for frames with photons; 0, 1 or 2 for the frames of a dark run with
            the gain forced to G0, G1 or G2 (:meth:`SyntheticJungfrau.dark_frame`).
    """

    def __init__(self, pool_size: int = 20, hit_fraction: float = 0.5, seed: int = 0,
                 dark_stage: int | None = None) -> None:
        self.detector = SyntheticJungfrau(n_modules=2, hit_fraction=hit_fraction, seed=seed)
        if dark_stage is None:
            self._frames = [self.detector.raw_frame(index)[0].copy()
                            for index in range(pool_size)]
        else:
            self._frames = [self.detector.dark_frame(index, dark_stage)
                            for index in range(pool_size)]

    def __len__(self) -> int:
        return len(self._frames)

    def frame(self, index: int) -> np.ndarray:
        """Returns raw frame ``index`` modulo the pool: uint16 (1024, 1024)."""
        return self._frames[index % len(self)]

    def write_calibration(self, directory: pathlib.Path) -> tuple[list[str], list[str]]:
        """Writes the simulated detector's calibration files (OM layout, one per module)."""
        return self.detector.write_calibration_files(directory)


SATURATED_WORD = 0b11 << 14
"""G2 with ADC 0: the JUNGFRAU's mark of a saturated pixel (om's calibration makes it +inf)."""


class SaturatingFrameSource:
    """Another source's raw frames with saturated pixels injected: in every ``interval``-th
    frame (index 0, interval, 2 interval, ...), the ``pixels`` brightest G0 pixels at least
    ``spacing`` pixels apart read G2 with ADC 0: brightest above the median of the source's
    frames (a pedestal estimate), so these are the centres of the brightest spots and the peaks
    around them are flagged. Frames already saturated keep their own saturated pixels.

    Args:
        source: the frame source (``frame(index)``, ``len``, ``write_calibration``).
        pixels: pixels saturated per chosen frame (>= 0).
        interval: saturate every this-th frame (>= 1).
        spacing: the smallest distance between two injected pixels, pixels.
    """

    def __init__(self, source, pixels: int, interval: int = 1, spacing: int = 10) -> None:
        self._source = source
        self._pixels = max(0, int(pixels))
        self._interval = max(1, int(interval))
        self._spacing = spacing
        self._cache: dict[int, np.ndarray] = {}
        self._baseline: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self._source)

    def injected(self, index: int) -> np.ndarray:
        """int64 (k, 2): the (row, col) of the pixels saturated in frame ``index``."""
        if index % self._interval:
            return np.zeros((0, 2), dtype=np.int64)
        if self._baseline is None:
            frames = np.stack([self._source.frame(i) for i in range(min(len(self), 50))])
            self._baseline = np.median(frames & 0x3FFF, axis=0)
        raw = self._source.frame(index)
        adc = np.where(raw >> 14 == 0, (raw & 0x3FFF) - self._baseline, -np.inf)
        chosen: list[tuple[int, int]] = []
        for flat in np.argsort(adc, axis=None)[::-1][:200_000]:
            row, col = divmod(int(flat), raw.shape[1])
            if all(max(abs(row - r), abs(col - c)) >= self._spacing for r, c in chosen):
                chosen.append((row, col))
                if len(chosen) == self._pixels:
                    break
        return np.array(chosen, dtype=np.int64).reshape(-1, 2)

    def frame(self, index: int) -> np.ndarray:
        """Returns raw frame ``index`` (uint16 (1024, 1024)) with the saturated pixels."""
        key = index % max(len(self), 1)
        if index % self._interval:
            return self._source.frame(index)
        if key not in self._cache:
            raw = self._source.frame(index).copy()
            where = self.injected(index)
            raw[where[:, 0], where[:, 1]] = SATURATED_WORD
            self._cache[key] = raw
        return self._cache[key]

    def write_calibration(self, directory: pathlib.Path):
        """The source's calibration files (see its ``write_calibration``)."""
        return self._source.write_calibration(directory)
