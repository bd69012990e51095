# SPDX-License-Identifier: GPL-3.0-or-later
"""HDF5 files as events: NXmx master files (DECTRIS, Jungfraujoch), data files, plain HDF5.

``om: {data_retrieval_layer: Hdf5FilesDataRetrieval}`` in ``monitor.yaml`` selects it; the
``SOURCE`` of ``om_monitor.py`` lists the files (paths or glob patterns) and, for follow mode,
the URL of Jungfraujoch's file notifications (see
:mod:`om.data_retrieval_layer.data_event_handler_files` and ``docs/source_files.md``).

The events are made by
:class:`~om.data_retrieval_layer.data_event_handler_files.Hdf5FilesDataEventHandler`; the Data
Sources below read them.
"""

import os
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from om.data_retrieval_layer.data_event_handler_files import Hdf5FilesDataEventHandler
from om.data_retrieval_layer.data_sources_generic import (
    FALLBACK_PARAMETERS,
    EventIdFromEvent,
    FloatFromEventOrConfiguration,
    TimestampFromEvent,
    fallback_sources,
)
from om.data_retrieval_layer.jungfrau_calibration import (
    CALIBRATION_FILE_PARAMETERS,
    MODULE_SHAPE,
    JungfrauCalibration,
)
from om.data_retrieval_layer.nxmx_files import to_float32
from om.lib.exceptions import (
    OmConfigurationError,
    OmDataExtractionError,
    OmInvalidDataError,
)
from om.lib.parameters import MonitorParameters, Parameter, ParameterGroup
from om.lib.problems import problems

_GROUP = "data_retrieval_layer"


class DetectorDataHdf5Files:
    """The image of an event: float32 (ss, fs), NaN for invalid pixels.

    Integer images are converted exactly (up to 2**24), with the all-ones value of unsigned
    types (0xFFFF...) and the minimum of signed types as NaN
    (:func:`om.data_retrieval_layer.nxmx_files.to_float32`); float images are kept. Pixels of
    the file's NXmx ``pixel_mask`` (non-zero) are NaN when ``files_apply_pixel_mask`` is true.

    With ``{name}_calibration`` true (the source's name is ``detector``, hence
    ``detector_calibration``), the images must be raw JUNGFRAU words, uint16
    (n_modules * 512, 1024) (a 512-row image is one module), calibrated with
    :class:`~om.data_retrieval_layer.jungfrau_calibration.JungfrauCalibration` from the keys
    ``{name}_dark_filenames`` and ``{name}_gain_filenames`` (one per module, module 0 = rows
    0-511), ``{name}_photon_energy_kev`` (null: ``fallback_beam_energy_in_eV`` / 1000),
    ``{name}_calibration_units``, ``{name}_pedestal_convention``, ``{name}_double_pixels``:
    the keys of the JUNGFRAU 1M source, any number of modules.
    """

    parameter_groups: ClassVar[tuple[ParameterGroup, ...]] = (
        ParameterGroup(_GROUP, (
            Parameter("detector_calibration", bool, default=False,
                      description="calibrate raw JUNGFRAU words (uint16, 512 rows per module)"),
            Parameter("detector_photon_energy_kev", float, default=None, nullable=True,
                      description="photon energy used to convert keV to photons, keV (null: "
                      "fallback_beam_energy_in_eV)"),
            *CALIBRATION_FILE_PARAMETERS,
            Parameter("files_apply_pixel_mask", bool, default=True,
                      description="pixels of the file's NXmx pixel_mask (non-zero) are NaN"),
        )),
    )

    def __init__(self, *, data_source_name: str, parameters: MonitorParameters) -> None:
        self._name = data_source_name
        self._parameters = parameters
        self._calibration: JungfrauCalibration | None = None
        self._apply_mask = True

    def _get(self, key: str) -> Any:
        return self._parameters.get(_GROUP, f"{self._name}_{key}")

    def initialize_data_source(self) -> None:
        """Reads the calibration files when calibration is on.

        Raises:
            OmConfigurationError: when the file lists are empty or of unequal lengths, a file
                is missing or malformed, or the photon energy is not positive; naming the key.
        """
        self._apply_mask = bool(self._parameters.get(_GROUP, "files_apply_pixel_mask"))
        if not self._get("calibration") or self._calibration is not None:
            return
        where = f"{self._parameters.filename}: {_GROUP}"
        darks = [self._parameters.resolve_path(name) for name in self._get("dark_filenames")]
        gains = [self._parameters.resolve_path(name) for name in self._get("gain_filenames")]
        if not darks or len(darks) != len(gains):
            raise OmConfigurationError(
                f"{where}/{self._name}_dark_filenames: calibration needs one dark and one gain "
                f"file per module, got {len(darks)} and {len(gains)}")
        for key, names in (("dark_filenames", darks), ("gain_filenames", gains)):
            for name in names:
                if not os.path.isfile(name):
                    raise OmConfigurationError(f"{where}/{self._name}_{key}: no file {name}")
        energy = self._get("photon_energy_kev")
        if energy is None:
            energy = self._parameters.get(_GROUP, "fallback_beam_energy_in_eV") / 1000.0
        if energy <= 0:
            raise OmConfigurationError(
                f"{where}/{self._name}_photon_energy_kev: must be > 0 when calibrating")
        try:
            self._calibration = JungfrauCalibration.from_files(
                dark_filenames=darks, gain_filenames=gains, photon_energy_kev=energy,
                units=self._get("calibration_units"), double_pixels=self._get("double_pixels"),
                pedestal_convention=self._get("pedestal_convention"),
            )
        except OmConfigurationError as error:
            raise OmConfigurationError(f"{where}/{self._name}_dark/gain_filenames: {error}")
        # Compile the kernel now (or load numba's cache), not on the first image.
        self._calibration.calibrate_module(np.zeros(MODULE_SHAPE, dtype=np.uint16), 0,
                                           np.empty(MODULE_SHAPE, dtype=np.float32))

    def get_data(self, *, event: dict[str, Any]) -> NDArray[np.float32]:
        """Returns the image: float32 (ss, fs), photons (or the file's units), NaN invalid.

        Raises:
            OmDataExtractionError: when calibration is on and the image is not uint16
                (n_modules * 512, 1024), or the image's dtype cannot be converted.
        """
        image = event["image"]
        if self._calibration is None:
            try:
                frame = to_float32(image)
            except OmInvalidDataError as error:
                raise OmDataExtractionError(f"event {event['event_id']}: {error}")
        else:
            shape = self._calibration.frame_shape
            if image.dtype != np.uint16 or image.shape != shape:
                raise OmDataExtractionError(
                    f"event {event['event_id']}: JUNGFRAU calibration needs raw words uint16 "
                    f"{shape} ({self._calibration.n_modules} modules), got {image.dtype} "
                    f"{image.shape}")
            frame, counts = self._calibration.calibrate(np.ascontiguousarray(image))
            if counts.invalid_gain:
                problems.report("invalid_gain_pixels", f"event {event['event_id']}: "
                                f"{counts.invalid_gain} pixels with gain code 0b10 ignored",
                                count=counts.invalid_gain)
            if counts.missing:
                problems.report("missing_packet_pixels", f"event {event['event_id']}: "
                                f"{counts.missing} pixels of lost packets ignored",
                                count=counts.missing)
        mask = event.get("pixel_mask")
        if self._apply_mask and mask is not None and mask.shape == frame.shape:
            frame[mask] = np.nan
        return frame


class TimestampHdf5Files(TimestampFromEvent):
    """The event's timestamp, float64 s since the epoch: the file's NXmx ``/entry/start_time``
    plus the image index times ``frame_time`` when present, else the file's mtime."""


class EventIdHdf5Files(EventIdFromEvent):
    """The event's identifier: ``"<file>//<image index>"`` (file as listed, index 0-based in
    the file's numbering); :meth:`Hdf5FilesDataEventHandler.retrieve_event_data` takes it."""


class FloatFromFileOrConfiguration(FloatFromEventOrConfiguration):
    """A number from the event's file (e.g. the NXmx beam energy), else a configured fallback.

    Args:
        data_source_name: the source's name.
        parameters: the monitor's configuration.
        event_key: the event's key holding the file's value (None when the file has none).
        fallback_key: the ``data_retrieval_layer`` key of the fallback value.
    """


class Hdf5FilesDataRetrieval:
    """Images of HDF5 files, one per event.

    Data Sources: ``detector_data`` (float32 (ss, fs), NaN invalid; optionally JUNGFRAU
    calibration), ``timestamp`` (float64 s), ``event_id`` (``"<file>//<index>"``),
    ``beam_energy`` (eV: NXmx ``incident_wavelength`` or photon energy of the file, or of the
    Jungfraujoch notification, else ``fallback_beam_energy_in_eV``) and ``detector_distance``
    (mm: NXmx ``detector_distance`` of the file or notification, else
    ``fallback_detector_distance_in_mm``).

    Args:
        parameters: the monitor's configuration.
        source: comma-separated file paths, glob patterns and Jungfraujoch notification URLs.

    Raises:
        OmConfigurationError: when the source names nothing or has a non-ZeroMQ URL.
    """

    parameter_groups: ClassVar[tuple[ParameterGroup, ...]] = (
        FALLBACK_PARAMETERS,
        *DetectorDataHdf5Files.parameter_groups,
        *Hdf5FilesDataEventHandler.parameter_groups,
    )

    def __init__(self, *, parameters: MonitorParameters, source: str) -> None:
        data_sources = {
            "timestamp": TimestampHdf5Files(data_source_name="timestamp", parameters=parameters),
            "event_id": EventIdHdf5Files(data_source_name="event_id", parameters=parameters),
            "detector_data": DetectorDataHdf5Files(data_source_name="detector",
                                                   parameters=parameters),
            **fallback_sources(FloatFromFileOrConfiguration, parameters,
                               beam_energy_key="beam_energy_eV",
                               detector_distance_key="detector_distance_mm"),
        }
        self._handler = Hdf5FilesDataEventHandler(
            source=source, data_sources=data_sources, parameters=parameters)

    def get_data_event_handler(self) -> Hdf5FilesDataEventHandler:
        """Returns the Data Event Handler with its Data Sources."""
        return self._handler
