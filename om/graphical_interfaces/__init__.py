# SPDX-License-Identifier: GPL-3.0-or-later
"""The graphical interfaces: ``om_crystallography_gui.py`` and ``om_frame_viewer.py``.

- :mod:`~om.graphical_interfaces.subscriber`: receiving and checking the monitor's broadcasts
  and sending requests, without Qt and without ever blocking the GUI thread.
- :mod:`~om.graphical_interfaces.common`: the window base class, resolution rings,
  ``save_screenshot``, start-up.
- :mod:`~om.graphical_interfaces.crystallography_gui`, :mod:`~om.graphical_interfaces.frame_viewer`:
  the two GUIs.
- :mod:`~om.graphical_interfaces.synthetic`: synthetic messages and a stand-in publisher.

Importing this package does not import Qt (see ``docs/gui.md``).
"""
