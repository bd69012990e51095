# SPDX-License-Identifier: GPL-3.0-or-later
"""JUNGFRAU calibration: raw 16-bit pixel words to photons or keV.

Format (PSI's conventions, as summarised in ``shared/reference/jungfrau_zmq_stream.md``):

* A module is 512 x 1024 pixels (ss x fs). A pixel word is a little-endian ``uint16``:
  bits 15-14 are the gain stage code (``0b00`` = G0, ``0b01`` = G1, ``0b11`` = G2,
  ``0b10`` is invalid), bits 13-0 are the ADC value.
* ``0xFFFF`` marks a pixel of a packet the receiver missed. G1 or G2 with ADC 0 means the
  pixel saturated.
* Per pixel and per gain stage ``g``: a pedestal ``P[g]`` (ADC units) and a gain ``G[g]``
  (ADU per keV; G1 and G2 are negative)::

      energy_keV = (ADC - P[g]) / G[g]
      photons    = energy_keV / photon_energy_keV

* The double-size pixels at ASIC borders (columns 255/256, 511/512, 767/768 and rows 255/256
  of a module) collect twice the area (four times at the ASIC corners where both apply);
  by default their values are divided by 2 (4).

Missing and invalid-gain pixels become NaN and saturated pixels +inf (the mark that
``om/processing_layer/saturation.py`` counts), so that peak finding ignores them (it uses finite
values only); all three are counted.

The per-pixel constants are staged at construction as float32 (pedestal and multiplier
``1 / (G * E)`` including the double-pixel factor, per gain stage), so the kernel, a
``numba`` loop compiled with ``nogil=True`` (modules can be calibrated in parallel threads),
does one subtraction and one multiplication per pixel and allocates nothing. Nearly all pixels
are in G0: the kernel calibrates chunks of 128 pixels as G0 in a vectorised (SIMD) loop that
also ORs their words, and goes back over a chunk pixel by pixel only when a word has a gain bit
set (G1, G2, invalid, missing), which gives the same values as the per-pixel rule above. With
C-contiguous arrays a whole frame is one kernel call (any other layout: a plain per-pixel
loop).
"""

import contextlib
import logging
import math
import os
from collections.abc import Iterator, Sequence
from typing import Literal, NamedTuple

import h5py
import numba
import numpy as np
from numpy.typing import NDArray

from om.lib.exceptions import OmConfigurationError, OmInvalidDataError
from om.lib.parameters import Parameter

logger = logging.getLogger(__name__)

MODULE_SHAPE: tuple[int, int] = (512, 1024)
"""Shape (ss, fs) of one JUNGFRAU module, in pixels."""

N_GAIN_STAGES: int = 3

DOUBLE_PIXEL_COLUMNS: tuple[int, ...] = (255, 256, 511, 512, 767, 768)
"""Columns (fs) of a module whose pixels are double-size (ASIC borders)."""

DOUBLE_PIXEL_ROWS: tuple[int, ...] = (255, 256)
"""Rows (ss) of a module whose pixels are double-size (ASIC borders)."""

_WORD_OFFSETS: tuple[float, float, float] = (0.0, 16384.0, 49152.0)
# Gain-bit value of G0, G1 and G2 words: OM's dark files hold means of the whole word.

_GAIN_FILE_BYTES = N_GAIN_STAGES * MODULE_SHAPE[0] * MODULE_SHAPE[1] * 8

CALIBRATION_FILE_PARAMETERS: tuple[Parameter, ...] = (
    Parameter("detector_dark_filenames", list, element_type=str, default=[],
              description="one dark HDF5 file (gain0/gain1/gain2) per module"),
    Parameter("detector_gain_filenames", list, element_type=str, default=[],
              description="one raw float64 (3, 512, 1024) gain file (ADU/keV) per module"),
    Parameter("detector_calibration_units", str, default="photons",
              choices=("photons", "keV"), description="units of the calibrated frame"),
    Parameter("detector_pedestal_convention", str, default="auto",
              choices=("auto", "adc", "word"),
              description="pedestals in ADC units (PSI) or of the whole word (OM)"),
    Parameter("detector_double_pixels", str, default="divide",
              choices=("divide", "keep"),
              description="divide the double-size ASIC-border pixels by their area"),
)
"""The configuration keys of the calibration files and options of a JUNGFRAU Data Source
named ``detector`` (each source adds ``detector_calibration`` and
``detector_photon_energy_kev``, whose defaults differ)."""


class CalibrationCounts(NamedTuple):
    """Numbers of pixels of a module (or a frame) the calibration could not calibrate (NaN;
    +inf for the saturated ones).

    Attributes:
        missing: pixels with word ``0xFFFF`` (packet missed by the receiver).
        invalid_gain: pixels with the invalid gain code ``0b10``.
        saturated: G1 or G2 pixels with ADC value 0.
    """

    missing: int
    invalid_gain: int
    saturated: int

    def total(self) -> int:
        """Returns the number of pixels set to NaN or +inf."""
        return self.missing + self.invalid_gain + self.saturated

    def __add__(self, other: "CalibrationCounts") -> "CalibrationCounts":  # type: ignore[override]
        return CalibrationCounts(
            self.missing + other.missing,
            self.invalid_gain + other.invalid_gain,
            self.saturated + other.saturated,
        )


_JIT = dict(cache=True, nogil=True, error_model="numpy", boundscheck=False)

_CHUNK = 128
# Pixels per chunk of the fast path (divides the 512 * 1024 pixels of a module).

_U = np.uint64
# Flat indices are cast to unsigned: numba then skips the negative-index wraparound, which
# otherwise keeps LLVM from vectorising the loops.


@numba.njit(**_JIT)
def _calibrate_kernel(raw, pedestal, multiplier, out):  # pragma: no cover - compiled
    # Any layout. raw: uint16 (512, 1024); pedestal, multiplier: float32 (3, 512, 1024); out:
    # float32 (512, 1024). Returns (missing, invalid_gain, saturated).
    missing = 0
    invalid = 0
    saturated = 0
    nan = np.float32(np.nan)
    inf = np.float32(np.inf)
    n_ss, n_fs = raw.shape
    for i in range(n_ss):
        for j in range(n_fs):
            word = np.int32(raw[i, j])
            code = word >> 14
            adc = word & 0x3FFF
            if code == 0:
                out[i, j] = (np.float32(adc) - pedestal[0, i, j]) * multiplier[0, i, j]
            elif word == 0xFFFF:
                out[i, j] = nan
                missing += 1
            elif code == 2:
                out[i, j] = nan
                invalid += 1
            elif adc == 0:
                out[i, j] = inf
                saturated += 1
            else:
                stage = 1 if code == 1 else 2
                out[i, j] = (np.float32(adc) - pedestal[stage, i, j]) * multiplier[stage, i, j]
    return missing, invalid, saturated


@numba.njit(**_JIT)
def _calibrate_other_stages(raw, pedestal, multiplier, out, module_start, start,
                            stop):  # pragma: no cover - compiled
    # The pixels start..stop of a module (raw and out index module_start + pixel) whose words
    # are not G0: G1/G2 calibration, or NaN. Returns (missing, invalid_gain, saturated).
    missing = 0
    invalid = 0
    saturated = 0
    nan = np.float32(np.nan)
    inf = np.float32(np.inf)
    for pixel in range(start, stop):
        index = module_start + pixel
        word = np.int32(raw[index])
        code = word >> 14
        if code == 0:
            continue
        adc = word & 0x3FFF
        if word == 0xFFFF:
            out[index] = nan
            missing += 1
        elif code == 2:
            out[index] = nan
            invalid += 1
        elif adc == 0:
            out[index] = inf
            saturated += 1
        else:
            stage = 1 if code == 1 else 2
            out[index] = (np.float32(adc) - pedestal[stage, pixel]) * multiplier[stage, pixel]
    return missing, invalid, saturated


@numba.njit(**_JIT)
def _calibrate_flat_kernel(raw, pedestal, multiplier, out):  # pragma: no cover - compiled
    # C-contiguous. raw: uint16 (n * 512 * 1024,); pedestal, multiplier: float32 (n, 3,
    # 512 * 1024); out: float32 (n * 512 * 1024,). Returns (missing, invalid_gain, saturated).
    # Nearly all pixels are in G0: each chunk is calibrated as G0 by a vectorised loop that
    # also ORs its words; a chunk holding another gain code (bit 14 or 15 set) is then
    # corrected pixel by pixel.
    n_modules, _, size = pedestal.shape
    missing = 0
    invalid = 0
    saturated = 0
    for module in range(n_modules):
        module_start = module * size
        pedestal0 = pedestal[module, 0]
        multiplier0 = multiplier[module, 0]
        for start in range(0, size, _CHUNK):
            words = np.int32(0)
            for j in range(_CHUNK):
                pixel = _U(start + j)
                word = np.int32(raw[_U(module_start) + pixel])
                words |= word
                out[_U(module_start) + pixel] = (
                    (np.float32(word) - pedestal0[pixel]) * multiplier0[pixel])
            if words >= 0x4000:
                chunk_missing, chunk_invalid, chunk_saturated = _calibrate_other_stages(
                    raw, pedestal[module], multiplier[module], out, module_start, start,
                    start + _CHUNK)
                missing += chunk_missing
                invalid += chunk_invalid
                saturated += chunk_saturated
    return missing, invalid, saturated


def double_pixel_factors(shape: tuple[int, int] = MODULE_SHAPE) -> NDArray[np.float32]:
    """Returns the per-pixel area correction of one module: 1, 1/2 or 1/4.

    Args:
        shape: the module shape (ss, fs); only (512, 1024) is meaningful.

    Returns:
        float32 array of ``shape``: 0.5 on the double-size pixels at ASIC borders (rows 255/256,
        columns 255/256, 511/512, 767/768), 0.25 where a double row meets a double column, 1
        elsewhere.
    """
    factors = np.ones(shape, dtype=np.float32)
    factors[list(DOUBLE_PIXEL_ROWS), :] *= 0.5
    factors[:, list(DOUBLE_PIXEL_COLUMNS)] *= 0.5
    return factors


class JungfrauCalibration:
    """Pedestal and gain calibration of JUNGFRAU modules, raw words to photons or keV.

    Args:
        pedestals: per-pixel pedestals, shape (n_modules, 3, 512, 1024) in G0, G1, G2 order,
            in ADC units (gain bits not included: PSI's and Jungfraujoch's convention).
            Converted to float32.
        gains_adu_per_kev: per-pixel gains, shape (n_modules, 3, 512, 1024), in ADU per keV
            (G1 and G2 negative, PSI's convention).
        photon_energy_kev: the photon energy in keV (used when ``units`` is "photons").
        units: "photons" or "keV".
        double_pixels: "divide" (default) divides the double-size pixels at ASIC borders by 2
            and the four ASIC-corner pixels by 4; "keep" leaves them as measured.

    Raises:
        OmConfigurationError: wrong shape of the arrays, mismatched shapes, photon energy not
            positive and finite, unknown ``units`` or ``double_pixels``.

    Pixels whose gain is zero or not finite, or whose pedestal is not finite, cannot be
    calibrated: they always become NaN (their number is logged once and kept in
    :attr:`uncalibratable_pixels`).
    """

    def __init__(
        self,
        pedestals: NDArray[np.floating],
        gains_adu_per_kev: NDArray[np.floating],
        photon_energy_kev: float,
        units: Literal["photons", "keV"] = "photons",
        double_pixels: Literal["keep", "divide"] = "divide",
    ) -> None:
        if units not in ("photons", "keV"):
            raise OmConfigurationError(
                f"JUNGFRAU calibration: units must be 'photons' or 'keV', not {units!r}"
            )
        if double_pixels not in ("keep", "divide"):
            raise OmConfigurationError(
                "JUNGFRAU calibration: double_pixels must be 'keep' or 'divide', "
                f"not {double_pixels!r}"
            )
        try:
            energy = float(photon_energy_kev)
        except (TypeError, ValueError):
            energy = math.nan
        if not math.isfinite(energy) or energy <= 0.0:
            raise OmConfigurationError(
                "JUNGFRAU calibration: photon energy must be a positive number of keV, "
                f"not {photon_energy_kev!r}"
            )
        pedestals = np.asarray(pedestals)
        gains = np.asarray(gains_adu_per_kev)
        for name, array in (("pedestals", pedestals), ("gains", gains)):
            if array.ndim != 4 or array.shape[0] < 1 or array.shape[1:] != (3, *MODULE_SHAPE):
                raise OmConfigurationError(
                    f"JUNGFRAU calibration: {name} must have shape (n_modules, 3, 512, 1024), "
                    f"not {array.shape}"
                )
        if pedestals.shape != gains.shape:
            raise OmConfigurationError(
                f"JUNGFRAU calibration: pedestals {pedestals.shape} and gains {gains.shape} "
                "differ in shape"
            )

        self.n_modules: int = pedestals.shape[0]
        self.photon_energy_kev: float = energy
        self.units: str = units
        self.double_pixels: str = double_pixels

        # The staged constants, float32, C-contiguous: pedestal and 1 / (G * E) * area factor.
        scale = np.float64(energy if units == "photons" else 1.0)
        gains64 = gains.astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            multiplier = 1.0 / (gains64 * scale)
        if double_pixels == "divide":
            multiplier *= double_pixel_factors().astype(np.float64)
        pedestal32 = np.ascontiguousarray(pedestals, dtype=np.float32)
        bad = ~np.isfinite(multiplier) | (gains64 == 0.0) | ~np.isfinite(pedestal32)
        multiplier[bad] = np.nan
        self._multiplier: NDArray[np.float32] = np.ascontiguousarray(multiplier, dtype=np.float32)
        self._pedestal: NDArray[np.float32] = pedestal32
        self._pedestal.flags.writeable = False
        self._multiplier.flags.writeable = False
        # The same constants as (n_modules, 3, 512 * 1024) views, for the flat kernel.
        self._pedestal_flat = self._pedestal.reshape(self.n_modules, N_GAIN_STAGES, -1)
        self._multiplier_flat = self._multiplier.reshape(self.n_modules, N_GAIN_STAGES, -1)
        self.uncalibratable_pixels: int = int(bad.sum())
        if self.uncalibratable_pixels:
            logger.warning(
                "JUNGFRAU calibration: %d pixel/gain-stage entries have a zero or non-finite "
                "gain or pedestal and will read NaN",
                self.uncalibratable_pixels,
            )

    @property
    def frame_shape(self) -> tuple[int, int]:
        """Shape (n_modules * 512, 1024) of a whole frame, modules stacked along ss."""
        return (self.n_modules * MODULE_SHAPE[0], MODULE_SHAPE[1])

    @property
    def pedestals(self) -> NDArray[np.float32]:
        """The staged pedestals, read-only float32 (n_modules, 3, 512, 1024), ADC units."""
        return self._pedestal

    @property
    def multipliers(self) -> NDArray[np.float32]:
        """The staged multipliers 1 / (G * E) (or 1 / G for keV) times the double-pixel factor.

        Read-only float32 (n_modules, 3, 512, 1024), photons (or keV) per ADU; NaN where the
        pixel cannot be calibrated.
        """
        return self._multiplier

    @classmethod
    def from_files(
        cls,
        *,
        dark_filenames: Sequence[str | os.PathLike],
        gain_filenames: Sequence[str | os.PathLike],
        photon_energy_kev: float,
        units: Literal["photons", "keV"] = "photons",
        double_pixels: Literal["keep", "divide"] = "divide",
        pedestal_convention: Literal["auto", "adc", "word"] = "auto",
    ) -> "JungfrauCalibration":
        """Reads OM's calibration file layout, one dark file and one gain file per module.

        Args:
            dark_filenames: one HDF5 file per module, in module order, with datasets ``gain0``,
                ``gain1``, ``gain2``: float (512, 1024) pedestals of G0, G1, G2.
            gain_filenames: one file per module, in module order: raw little-endian float64,
                shape (3, 512, 1024) in G0, G1, G2 order, ADU per keV (PSI's gain files).
            photon_energy_kev: the photon energy in keV.
            units: "photons" or "keV".
            double_pixels: "divide" or "keep" (see the class).
            pedestal_convention: "adc" (pedestals in ADC units, PSI/Jungfraujoch), "word" (means
                of the whole 16-bit word, OM's dark files: G1 darks are ~16384 + P and G2 darks
                ~49152 + P; 16384 and 49152 are subtracted), or "auto" (decided per file from the
                medians of ``gain1`` and ``gain2``: above 16383, the word convention; logged).

        Returns:
            The calibration.

        Raises:
            OmConfigurationError: unequal numbers of dark and gain files, no files, a missing or
                unreadable file, a gain file of the wrong size, a missing dataset or one of the
                wrong shape, a dark file inconsistent with the requested or detected convention.
                The one-line message names the file (and the dataset).
        """
        if pedestal_convention not in ("auto", "adc", "word"):
            raise OmConfigurationError(
                "JUNGFRAU calibration: pedestal_convention must be 'auto', 'adc' or 'word', "
                f"not {pedestal_convention!r}"
            )
        if isinstance(dark_filenames, (str, os.PathLike)) or isinstance(
            gain_filenames, (str, os.PathLike)
        ):
            raise OmConfigurationError(
                "JUNGFRAU calibration: dark_filenames and gain_filenames must be lists of "
                "file names"
            )
        if len(dark_filenames) != len(gain_filenames):
            raise OmConfigurationError(
                f"JUNGFRAU calibration: {len(dark_filenames)} dark files but "
                f"{len(gain_filenames)} gain files (one of each per module)"
            )
        if not dark_filenames:
            raise OmConfigurationError("JUNGFRAU calibration: no dark and gain files given")
        n_modules = len(dark_filenames)
        pedestals = np.empty((n_modules, N_GAIN_STAGES, *MODULE_SHAPE), dtype=np.float32)
        gains = np.empty((n_modules, N_GAIN_STAGES, *MODULE_SHAPE), dtype=np.float64)
        for module, (dark_name, gain_name) in enumerate(zip(dark_filenames, gain_filenames)):
            pedestals[module] = read_dark_file(dark_name, pedestal_convention)
            gains[module] = read_gain_file(gain_name)
        return cls(pedestals, gains, photon_energy_kev, units=units, double_pixels=double_pixels)

    def calibrate_module(
        self, raw: NDArray[np.uint16], module_index: int, out: NDArray[np.float32]
    ) -> CalibrationCounts:
        """Calibrates one module's raw words into ``out``.

        Args:
            raw: uint16 (512, 1024) pixel words of module ``module_index`` (any array or view,
                read-only allowed, e.g. ``np.frombuffer(zmq_frame, np.uint16).reshape(512, 1024)``;
                C-contiguous is fastest).
            module_index: the module's position in the calibration (0 = rows 0-511 of a frame).
            out: float32 (512, 1024) writeable array or view to write into, e.g.
                ``frame[512:1024]``; photons or keV per pixel, NaN for missing and invalid-gain
                pixels (and pixels without a valid calibration), +inf for saturated ones.

        Returns:
            The numbers of missing, invalid-gain and saturated pixels.

        Raises:
            OmInvalidDataError: wrong dtype or shape of ``raw`` or ``out``, read-only ``out``,
                module index out of range.
        """
        if not 0 <= module_index < self.n_modules:
            raise OmInvalidDataError(
                f"JUNGFRAU calibration: module index {module_index} out of range "
                f"(0..{self.n_modules - 1})"
            )
        _check_module_array("raw", raw, np.dtype(np.uint16))
        _check_module_array("out", out, np.dtype(np.float32))
        if not out.flags.writeable:
            raise OmInvalidDataError("JUNGFRAU calibration: out array is read-only")
        if raw.flags.c_contiguous and out.flags.c_contiguous:
            modules = slice(module_index, module_index + 1)
            missing, invalid, saturated = _calibrate_flat_kernel(
                _read_only(raw.reshape(-1)), self._pedestal_flat[modules],
                self._multiplier_flat[modules], out.reshape(-1),
            )
        else:
            missing, invalid, saturated = _calibrate_kernel(
                _read_only(raw), self._pedestal[module_index], self._multiplier[module_index], out
            )
        return CalibrationCounts(int(missing), int(invalid), int(saturated))

    def calibrate(
        self, raw: NDArray[np.uint16], out: NDArray[np.float32] | None = None
    ) -> tuple[NDArray[np.float32], CalibrationCounts]:
        """Calibrates a whole frame, modules stacked along ss (module 0 = rows 0-511).

        Args:
            raw: uint16 (n_modules * 512, 1024) pixel words.
            out: optional float32 (n_modules * 512, 1024) array to write into; a new array
                otherwise.

        Returns:
            The calibrated frame (float32, photons or keV, NaN for missing and invalid-gain
            pixels, +inf for saturated ones) and the counts summed over the modules.

        Raises:
            OmInvalidDataError: wrong dtype or shape of ``raw`` or ``out``.
        """
        shape = self.frame_shape
        if not isinstance(raw, np.ndarray) or raw.dtype != np.uint16 or raw.shape != shape:
            raise OmInvalidDataError(
                f"JUNGFRAU calibration: raw frame must be uint16 {shape}, got {_describe(raw)}"
            )
        if out is None:
            out = np.empty(shape, dtype=np.float32)
        elif not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != shape:
            raise OmInvalidDataError(
                f"JUNGFRAU calibration: out frame must be float32 {shape}, got {_describe(out)}"
            )
        if raw.flags.c_contiguous and out.flags.c_contiguous:
            missing, invalid, saturated = _calibrate_flat_kernel(
                _read_only(raw.reshape(-1)), self._pedestal_flat, self._multiplier_flat,
                out.reshape(-1),
            )
            return out, CalibrationCounts(int(missing), int(invalid), int(saturated))
        counts = CalibrationCounts(0, 0, 0)
        rows = MODULE_SHAPE[0]
        for module in range(self.n_modules):
            rows_of_module = slice(module * rows, (module + 1) * rows)
            counts = counts + self.calibrate_module(
                raw[rows_of_module], module, out[rows_of_module]
            )
        return out, counts


def read_dark_file(
    filename: str | os.PathLike, pedestal_convention: Literal["auto", "adc", "word"] = "auto"
) -> NDArray[np.float32]:
    """Reads one module's OM dark file and returns its pedestals in ADC units.

    Args:
        filename: HDF5 file with datasets ``gain0``, ``gain1``, ``gain2``, float (512, 1024).
        pedestal_convention: "adc", "word" or "auto" (see :meth:`JungfrauCalibration.from_files`).

    Returns:
        float32 (3, 512, 1024) pedestals of G0, G1, G2 in ADC units.

    Raises:
        OmConfigurationError: missing or unreadable file, missing dataset, wrong shape or
            non-numeric dataset, values inconsistent with the convention.
    """
    pedestals = np.empty((N_GAIN_STAGES, *MODULE_SHAPE), dtype=np.float32)
    with _file_errors("dark", filename, " as HDF5"):
        handle = h5py.File(filename, "r")
    with handle:
        for stage in range(N_GAIN_STAGES):
            name = f"gain{stage}"
            dataset = handle.get(name)
            if not isinstance(dataset, h5py.Dataset):
                raise OmConfigurationError(
                    f"JUNGFRAU dark file {filename}: dataset '{name}' missing"
                )
            if dataset.shape != MODULE_SHAPE:
                raise OmConfigurationError(
                    f"JUNGFRAU dark file {filename}: dataset '{name}' has shape {dataset.shape}, "
                    f"expected {MODULE_SHAPE}"
                )
            if dataset.dtype.kind not in "fiu":
                raise OmConfigurationError(
                    f"JUNGFRAU dark file {filename}: dataset '{name}' has non-numeric type "
                    f"{dataset.dtype}"
                )
            try:
                pedestals[stage] = dataset[()]
            except OSError as error:
                raise OmConfigurationError(
                    f"JUNGFRAU dark file {filename}: dataset '{name}' cannot be read: "
                    f"{_one_line(error)}"
                ) from None

    medians = [float(np.nanmedian(pedestals[stage])) for stage in (1, 2)]
    looks_like_word = [median > 16383.5 for median in medians]
    if pedestal_convention == "auto":
        if looks_like_word[0] != looks_like_word[1]:
            raise OmConfigurationError(
                f"JUNGFRAU dark file {filename}: cannot decide the pedestal convention, median of "
                f"gain1 {medians[0]:.0f} and of gain2 {medians[1]:.0f} disagree"
            )
        convention = "word" if looks_like_word[0] else "adc"
        logger.info(
            "JUNGFRAU dark file %s: pedestal convention '%s' (median gain1 %.0f, gain2 %.0f)",
            filename, convention, medians[0], medians[1],
        )
    else:
        convention = pedestal_convention
        expected_word = convention == "word"
        for stage, median, is_word in zip((1, 2), medians, looks_like_word):
            if is_word != expected_word:
                raise OmConfigurationError(
                    f"JUNGFRAU dark file {filename}: dataset 'gain{stage}' median {median:.0f} "
                    f"does not fit the pedestal convention '{convention}'"
                )
    if convention == "word":
        pedestals[1] -= np.float32(_WORD_OFFSETS[1])
        pedestals[2] -= np.float32(_WORD_OFFSETS[2])
    return pedestals


def read_gain_file(filename: str | os.PathLike) -> NDArray[np.float64]:
    """Reads one module's PSI gain file.

    Args:
        filename: raw little-endian float64 file of shape (3, 512, 1024), G0, G1, G2 order,
            ADU per keV (exactly 12,582,912 bytes).

    Returns:
        float64 (3, 512, 1024) gains in ADU per keV.

    Raises:
        OmConfigurationError: missing or unreadable file, wrong size.
    """
    with _file_errors("gain", filename):
        size = os.path.getsize(filename)
        if size != _GAIN_FILE_BYTES:
            raise OmConfigurationError(
                f"JUNGFRAU gain file {filename} has {size} bytes, expected {_GAIN_FILE_BYTES} "
                "(float64 3 x 512 x 1024)"
            )
        gains = np.fromfile(filename, dtype="<f8")
    if gains.size * 8 != _GAIN_FILE_BYTES:
        raise OmConfigurationError(f"JUNGFRAU gain file {filename} was truncated while reading")
    return gains.astype(np.float64, copy=False).reshape(N_GAIN_STAGES, *MODULE_SHAPE)


def _read_only(array: NDArray) -> NDArray:
    # A read-only view: the kernels then see one array type whether the caller's array is
    # writeable or not (e.g. np.frombuffer), and are compiled (or loaded from the cache) once.
    if array.flags.writeable:
        array = array.view()
        array.flags.writeable = False
    return array


def _check_module_array(name: str, array: object, dtype: np.dtype) -> None:
    if not isinstance(array, np.ndarray) or array.dtype != dtype or array.shape != MODULE_SHAPE:
        hint = ""
        if name == "raw" and isinstance(array, np.ndarray) and array.dtype == np.int16:
            hint = " (read the words as uint16: int16 turns G2 words negative)"
        raise OmInvalidDataError(
            f"JUNGFRAU calibration: {name} must be {dtype} {MODULE_SHAPE}, "
            f"got {_describe(array)}{hint}"
        )


def _describe(array: object) -> str:
    if isinstance(array, np.ndarray):
        return f"{array.dtype} {array.shape}"
    return type(array).__name__


@contextlib.contextmanager
def _file_errors(kind: str, filename: str | os.PathLike, reading: str = "") -> Iterator[None]:
    # A missing or unreadable calibration file stops start-up with one line naming it.
    try:
        yield
    except FileNotFoundError:
        raise OmConfigurationError(f"JUNGFRAU {kind} file not found: {filename}") from None
    except OSError as error:
        raise OmConfigurationError(
            f"JUNGFRAU {kind} file {filename} cannot be read{reading}: {_one_line(error)}"
        ) from None


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())
