# SPDX-License-Identifier: GPL-3.0-or-later
"""Data Sources of a JUNGFRAU 1M read from slsReceiver's ZeroMQ streams.

The events these sources read are made by
:class:`om.data_retrieval_layer.data_event_handler_jungfrau_zmq.Jungfrau1MZmqDataEventHandler`:
``event["metadata"]`` holds ``frame_number`` (int), ``timestamp`` (float, s since the epoch) and
the JSON ``headers`` of the module streams; ``event["images"]`` holds one read-only buffer of
little-endian uint16 words per stream, in module order (module 0 = rows 0-511).
"""

import os
from typing import Any, ClassVar

import numpy as np

from om.data_retrieval_layer.data_sources_generic import DataSourceFromEvent
from om.data_retrieval_layer.jungfrau_calibration import (
    CALIBRATION_FILE_PARAMETERS,
    JungfrauCalibration,
)
from om.lib.exceptions import OmConfigurationError, OmDataExtractionError
from om.lib.parameters import MonitorParameters, Parameter, ParameterGroup
from om.lib.problems import problems

FRAME_SHAPE = (1024, 1024)
MODULE_SHAPE = (512, 1024)

_GROUP = "data_retrieval_layer"
SATURATED_PIXELS_KEY = "saturated_pixels"


class Jungfrau1MZmq:
    """The JUNGFRAU 1M frame: (1024, 1024), module 0 on top.

    Calibrated (float32, photons or keV; missing-packet, invalid-gain and saturated pixels are
    NaN) when ``{name}_calibration`` is true, else the raw uint16 words. Calibration files use
    OM's layout: keys ``{name}_dark_filenames``, ``{name}_gain_filenames`` (one per module, in
    module order), ``{name}_photon_energy_kev``, and the options ``{name}_calibration_units``,
    ``{name}_pedestal_convention``, ``{name}_double_pixels``; the data source name is
    ``detector`` in the JUNGFRAU 1M set-up, hence ``detector_calibration`` and so on.
    """

    parameter_groups: ClassVar[tuple[ParameterGroup, ...]] = (
        ParameterGroup(_GROUP, (
            Parameter("detector_calibration", bool, default=True,
                      description="calibrate the frames (true) or give the raw uint16 words"),
            Parameter("detector_photon_energy_kev", float, default=None,
                      description="photon energy used to convert keV to photons, keV"),
            *CALIBRATION_FILE_PARAMETERS,
        )),
    )

    def __init__(self, *, data_source_name: str, parameters: MonitorParameters) -> None:
        self._name = data_source_name
        self._parameters = parameters
        self._calibration: JungfrauCalibration | None = None

    def _get(self, key: str) -> Any:
        return self._parameters.get(_GROUP, f"{self._name}_{key}")

    def initialize_data_source(self) -> None:
        """Reads the calibration files when calibration is on.

        Raises:
            OmConfigurationError: when a key is missing or a file is missing or malformed.
        """
        if not self._get("calibration"):
            return
        where = f"{self._parameters.filename}: {_GROUP}"
        darks = [self._parameters.resolve_path(name) for name in self._get("dark_filenames")]
        gains = [self._parameters.resolve_path(name) for name in self._get("gain_filenames")]
        energy = self._get("photon_energy_kev")
        for key, value in (("dark_filenames", darks), ("gain_filenames", gains)):
            if len(value) != 2:
                raise OmConfigurationError(
                    f"{where}/{self._name}_{key}: a JUNGFRAU 1M needs 2 files (one per module), "
                    f"got {len(value)}"
                )
        for key, names in (("dark_filenames", darks), ("gain_filenames", gains)):
            for name in names:
                if not os.path.isfile(name):
                    raise OmConfigurationError(f"{where}/{self._name}_{key}: no file {name}")
        if energy is None or energy <= 0:
            raise OmConfigurationError(
                f"{where}/{self._name}_photon_energy_kev: required (> 0) when calibrating"
            )
        try:
            self._calibration = JungfrauCalibration.from_files(
                dark_filenames=darks, gain_filenames=gains, photon_energy_kev=energy,
                units=self._get("calibration_units"),
                double_pixels=self._get("double_pixels"),
                pedestal_convention=self._get("pedestal_convention"),
            )
        except OmConfigurationError as error:
            raise OmConfigurationError(f"{where}/{self._name}_dark/gain_filenames: {error}")
        # Compile the kernel now (or load numba's cache), not on the first frame: with a
        # read-only input, as the frames from ZeroMQ are (numba compiles per array type).
        words = np.frombuffer(bytes(MODULE_SHAPE[0] * MODULE_SHAPE[1] * 2), dtype="<u2")
        self._calibration.calibrate_module(words.reshape(MODULE_SHAPE), 0,
                                           np.empty(MODULE_SHAPE, dtype=np.float32))

    def get_data(self, *, event: dict[str, Any]) -> np.ndarray:
        """Returns the frame: float32 (1024, 1024) calibrated, or uint16 (1024, 1024) raw.

        Raises:
            OmDataExtractionError: when the event's images do not make a (1024, 1024) frame.
        """
        images = event["images"]
        words = [np.frombuffer(image, dtype="<u2") for image in images]
        if sum(word.size for word in words) != FRAME_SHAPE[0] * FRAME_SHAPE[1]:
            raise OmDataExtractionError(
                f"frame {event['metadata'].get('frame_number')}: the module images hold "
                f"{sum(word.size for word in words)} pixels, expected 1024x1024"
            )
        if len(words) != 2:  # half-module streams: join each module's halves
            joined = np.concatenate(words)
            words = [joined[: joined.size // 2], joined[joined.size // 2:]]
        modules = [word.reshape(MODULE_SHAPE) for word in words]
        if self._calibration is None:
            return np.concatenate(modules)
        frame = np.empty(FRAME_SHAPE, dtype=np.float32)
        missing = invalid = saturated = 0
        for index, module in enumerate(modules):
            counts = self._calibration.calibrate_module(
                module, index, frame[index * MODULE_SHAPE[0]:(index + 1) * MODULE_SHAPE[0]]
            )
            missing += counts.missing
            invalid += counts.invalid_gain
            saturated += counts.saturated
        # For SaturatedPixelsJungfrau1MZmq: the count the calibration made on the way, which
        # spares the processing layer a pass over the frame.
        event[SATURATED_PIXELS_KEY] = saturated
        frame_number = event["metadata"].get("frame_number")
        if invalid:
            problems.report("invalid_gain_pixels",
                            f"frame {frame_number}: {invalid} pixels with gain code 0b10 ignored",
                            count=invalid)
        if missing:
            problems.report("missing_packet_pixels",
                            f"frame {frame_number}: {missing} pixels of lost packets ignored",
                            count=missing)
        return frame


class TimestampJungfrau1MZmq(DataSourceFromEvent):
    """The event's timestamp: float64 seconds since the epoch.

    From the detector clock (100 ns ticks) anchored to the wall time at the first frame, on
    the collecting rank, so that every processing rank agrees.
    """

    def get_data(self, *, event: dict[str, Any]) -> np.float64:
        """Returns the timestamp (np.float64, s since the epoch)."""
        return np.float64(event["metadata"]["timestamp"])


class EventIdJungfrau1MZmq(DataSourceFromEvent):
    """The event's identifier: the detector frame number, as a string."""

    def get_data(self, *, event: dict[str, Any]) -> str:
        """Returns the frame number (str)."""
        return str(event["metadata"]["frame_number"])


class SaturatedPixelsJungfrau1MZmq(DataSourceFromEvent):
    """The number of saturated pixels (G1 or G2 with ADC 0, +inf in the calibrated frame) the
    calibration counted in the event's frame: int, or -1 when the frame is not calibrated. It
    reads what :class:`Jungfrau1MZmq` left in the event, so it comes after that source."""

    def get_data(self, *, event: dict[str, Any]) -> int:
        """Returns the count (int; -1: not counted)."""
        return int(event.get(SATURATED_PIXELS_KEY, -1))
