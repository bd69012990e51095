# SPDX-License-Identifier: GPL-3.0-or-later
"""Data Sources of MAX IV streaming-receiver's secondary port.

The events these sources read are made by :class:`~om.data_retrieval_layer.
data_event_handler_streaming_receiver.StreamingReceiverDataEventHandler` (see its module for
their content): ``event["image"]`` is the decoded (rows, columns) image, of the element type
the message declared.
"""

from typing import Any, ClassVar

import numpy as np

from om.data_retrieval_layer.data_sources_generic import (
    TimestampFromEvent,
    EventIdFromEvent,
    FloatFromEventOrConfiguration,
)
from om.lib.parameters import MonitorParameters, Parameter, ParameterGroup

_GROUP = "data_retrieval_layer"


class StreamingReceiverImage:
    """The image as a float32 (rows, columns) frame, in the detector's units (photons).

    With ``{name}_mask_special_values`` (``detector_mask_special_values``, true by default)
    these pixels are NaN, which peak finding ignores: the all-ones value of unsigned integer
    images (255 for uint8, 65535 for uint16, 4294967295 for uint32: DECTRIS' value of masked,
    defective and gap pixels), negative values of signed integer images (PILATUS' -1 for gaps
    and -2 for bad pixels) and infinities of float images. Integers are converted exactly up
    to 2^24.
    """

    parameter_groups: ClassVar[tuple[ParameterGroup, ...]] = (
        ParameterGroup(_GROUP, (
            Parameter("detector_mask_special_values", bool, default=True,
                      description="NaN at the all-ones value of unsigned images, at negative "
                                  "values of signed ones and at infinities of float ones"),
        )),
    )

    def __init__(self, *, data_source_name: str, parameters: MonitorParameters) -> None:
        self._name = data_source_name
        self._parameters = parameters
        self._mask = True

    def initialize_data_source(self) -> None:
        """Reads ``{name}_mask_special_values``."""
        self._mask = bool(self._parameters.get(_GROUP, f"{self._name}_mask_special_values"))

    def get_data(self, *, event: dict[str, Any]) -> np.ndarray:
        """Returns the frame: float32 (rows, columns), NaN at masked pixels.

        Raises:
            KeyError: when the event holds no image.
        """
        image = event["image"]
        frame = image.astype(np.float32)
        if not self._mask:
            return frame
        kind = image.dtype.kind
        if kind == "u":
            frame[image == np.iinfo(image.dtype).max] = np.nan
        elif kind == "i":
            frame[image < 0] = np.nan
        else:
            frame[np.isinf(frame)] = np.nan
        return frame


class TimestampStreamingReceiver(TimestampFromEvent):
    """The image's timestamp: float64 s since the epoch (the image message's ``timestamp``
    when it holds one, else the time the processing rank received the message)."""


class EventIdStreamingReceiver(EventIdFromEvent):
    """The event's identifier (str): ``"<filename>:<frame>"`` with the series header's
    filename, ``"unknown:<frame>"`` when this rank has no header for the series (split it at
    the last colon: filenames may hold colons)."""


class HeaderValueOrFallback(FloatFromEventOrConfiguration):
    """A value of the series' header metadata, or a configured fallback.

    Args:
        data_source_name: the name of the source.
        parameters: the monitor's configuration.
        event_key: the event's key (``beam_energy`` in eV, ``detector_distance`` in mm), None
            when this rank has no header for the series or the header has no valid value.
        fallback_key: the ``data_retrieval_layer`` key of the fallback (same unit).
    """

