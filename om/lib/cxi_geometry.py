# SPDX-License-Identifier: GPL-3.0-or-later
"""A CrystFEL geometry file for the CXI files of saved frames, made from the monitor's own.

The panel lines (corners, directions, ranges, rigid groups, bad regions...) are the monitor's
geometry file's, so indexamajig places every pixel as the monitor did. The lines that say where
the data are, and in which units, are replaced by those of om's CXI files
(:mod:`om.lib.cxi_writer`): frames at ``/entry_1/data_1/data`` (``dim0 = %``), Cheetah-style
peak lists at ``/entry_1/result_1`` (``peak_list_type = cxi``), the photon energy (eV) and the
detector distance (mm) of each frame from the file, and photons as the frame unit. Keys and
their meaning: ``man crystfel_geometry``.
"""

import re

from om.lib.cxi_writer import BAD_PIXEL_INT32

__all__ = ["cxi_geometry_text"]

# Keys (global, or after "panel/") replaced by the header below: where the data are and units.
_REPLACED = {"data", "dim0", "dim1", "dim2", "dim3", "photon_energy", "clen", "peak_list",
             "peak_list_type", "adu_per_eV", "adu_per_photon", "flag_lessthan"}
_KEY = re.compile(r"^\s*([^;=\s]+)\s*=")

_HEADER = f"""\
; For the CXI files om saves (docs/hit_saving.md): frames in photons (float32, NaN for bad
; pixels, or int32 rounded photons, {BAD_PIXEL_INT32} for bad pixels), the photon energy and the
; detector distance of each frame from the file, om's peak lists (indexamajig --peaks=cxi).
; The panel lines below are those of the monitor's geometry file:
; {{source}}
data = /entry_1/data_1/data
dim0 = %
dim1 = ss
dim2 = fs
peak_list = /entry_1/result_1
peak_list_type = cxi
photon_energy = /entry_1/instrument_1/source_1/photon_energy_eV eV
clen = /entry_1/instrument_1/detector_1/detector_distance_mm mm
adu_per_photon = 1
flag_lessthan = -1000000

"""


def cxi_geometry_text(monitor_geometry: str, source: str) -> str:
    """The geometry file for the saved CXI files.

    Args:
        monitor_geometry: the text of the monitor's CrystFEL geometry file.
        source: the path of that file (named in a comment).

    Returns:
        The header above, then every line of ``monitor_geometry`` except those setting a key
        the header sets (globally or for a panel).
    """
    kept = []
    for line in monitor_geometry.splitlines():
        match = _KEY.match(line)
        if match and match.group(1).rsplit("/", 1)[-1] in _REPLACED:
            continue
        kept.append(line)
    return _HEADER.format(source=source) + "\n".join(kept) + "\n"
