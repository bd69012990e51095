# SPDX-License-Identifier: GPL-3.0-or-later
"""om: a real-time data monitor for serial crystallography."""

__version__ = "0.1.0"
