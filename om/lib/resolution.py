# SPDX-License-Identifier: GPL-3.0-or-later
"""Resolution and radius on a flat detector: ``r = tan(2 theta) * distance / pixel_size`` with
``sin(theta) = lambda / (2 d)`` (Bragg's law) and ``lambda [A] = 12398.42 / E [eV]``.

Used by the GUIs (resolution rings) and the processing layer (the radial profile's ring); no Qt.
"""

import math

HC_EV_ANGSTROM = 12398.42
"""h * c in eV * Angstrom: wavelength [A] = HC_EV_ANGSTROM / photon energy [eV]."""


def _usable_geometry(beam_energy: float, detector_distance: float, pixel_size: float) -> bool:
    values = (beam_energy, detector_distance, pixel_size)
    return all(math.isfinite(value) and value > 0 for value in values)


def resolution_ring_radius(
    resolution: float, beam_energy: float, detector_distance: float, pixel_size: float
) -> float | None:
    """The radius, in pixels, of the ring of a given resolution on a flat detector.

    Args:
        resolution: d in Angstrom.
        beam_energy: photon energy in eV.
        detector_distance: sample-detector distance in mm.
        pixel_size: pixel size in m.

    Returns:
        ``r = tan(2 theta) * distance / pixel_size`` with ``sin(theta) = lambda / (2 d)``, or
        None when the ring does not exist (``lambda > 2 d``, or ``2 theta >= 90 degrees`` where
        it cannot hit a flat detector) or a parameter is not a positive number.
    """
    if not (_usable_geometry(beam_energy, detector_distance, pixel_size) and resolution > 0):
        return None
    wavelength = HC_EV_ANGSTROM / beam_energy
    sin_theta = wavelength / (2.0 * resolution)
    if sin_theta >= math.sqrt(0.5):  # 2 theta >= 90 degrees
        return None
    two_theta = 2.0 * math.asin(sin_theta)
    return math.tan(two_theta) * (detector_distance / 1000.0) / pixel_size


def resolution_at_radius(
    radius: float, beam_energy: float, detector_distance: float, pixel_size: float
) -> float | None:
    """The resolution d in Angstrom at ``radius`` pixels from the beam (None at the beam or
    with unusable geometry): ``2 theta = atan(r * pixel_size / distance)``, ``d = lambda /
    (2 sin theta)``."""
    if not (_usable_geometry(beam_energy, detector_distance, pixel_size) and radius > 0):
        return None
    wavelength = HC_EV_ANGSTROM / beam_energy
    two_theta = math.atan(radius * pixel_size / (detector_distance / 1000.0))
    return wavelength / (2.0 * math.sin(two_theta / 2.0))
