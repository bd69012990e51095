# SPDX-License-Identifier: GPL-3.0-or-later
"""Exceptions raised by the monitor.

Every exception carries a one-line message that names what was wrong (the key, the file,
the message part), because the monitor logs it as one line and goes on.
"""


class OmException(Exception):
    """Base class of every exception raised by om."""


class OmConfigurationError(OmException):
    """A configuration problem found at start-up: names the key and the file."""


class OmMissingDependencyError(OmException):
    """An optional library needed by the configured component is not installed."""


class OmDataExtractionError(OmException):
    """Data could not be extracted from an event (the event is skipped and counted)."""


class OmInvalidDataError(OmException):
    """A message or a file holds data of the wrong size, type or layout."""
