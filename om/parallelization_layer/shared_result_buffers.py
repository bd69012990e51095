# SPDX-License-Identifier: GPL-3.0-or-later
"""Frames from a processing rank to the collecting rank through shared memory, when MPI cannot
copy them directly.

Without single-copy transfers (:mod:`om.parallelization_layer.mpi_single_copy`) a large MPI
message moves only while its sender calls MPI, so a processing rank would have to wait until the
collecting rank takes each frame. Instead, the processing rank copies the frame into a free slot
of a shared-memory segment it owns (:class:`om.lib.shared_frame_slots.SharedFrameSlots`, in
``/dev/shm``) and sends only a small descriptor; the collecting rank copies the slot out and
sends the slot's number back, freeing it. Descriptors are msgpack maps ``{"path", "token",
"slots", "slot_bytes", "slot", "nbytes"}``. A collecting rank on another host finds no such
file (or another token) and answers slot ``-1``: the processing rank then sends through MPI.
"""

from typing import Any

import numpy as np

from om.lib.exceptions import OmInvalidDataError
from om.lib.shared_frame_slots import SharedFrameSlots

CANNOT_ATTACH = -1
"""The slot number a collecting rank sends back when it cannot see the segment."""


class SharedBufferSender:
    """The processing rank's side: ``n_slots`` slots, sized by the first buffer put.

    Args:
        n_slots: slots of the segment (buffers the collecting rank may hold at once).
    """

    def __init__(self, n_slots: int = 4) -> None:
        self._n_slots = n_slots
        self._slots: SharedFrameSlots | None = None
        self._free: list[int] = []
        self._usable = True
        self._attached = False

    def put(self, buffer: memoryview) -> dict[str, Any] | None:
        """Copies ``buffer`` (bytes of an array) into a free slot.

        Returns:
            The descriptor to send, or None when the buffer must go another way: no free slot,
            larger than a slot, the segment cannot be made (e.g. a full ``/dev/shm``) or the
            collecting rank cannot see it.
        """
        if not self._usable:
            return None
        size = buffer.nbytes
        if self._slots is None or (size > self._slots.slot_bytes
                                   and len(self._free) == self._n_slots):
            self.close()  # none yet, or too small and unused: a new segment, sized for this
            try:
                self._slots = SharedFrameSlots.create(self._n_slots, size, prefix="om_results")
            except OSError:
                self._usable = False
                return None
            self._free = list(range(self._n_slots))
            self._attached = False
        if size > self._slots.slot_bytes or not self._free:
            return None
        slot = self._free.pop()
        self._slots.slot(slot)[:size] = np.frombuffer(buffer, dtype=np.uint8)
        return {"path": self._slots.path, "token": self._slots.token, "slots": self._n_slots,
                "slot_bytes": self._slots.slot_bytes, "slot": slot, "nbytes": size}

    def release(self, slot: int) -> None:
        """Takes back a slot the collecting rank has copied out (or :data:`CANNOT_ATTACH`)."""
        if self._slots is None:
            return
        if slot == CANNOT_ATTACH:
            self._usable = False
            self.close()
            return
        if 0 <= slot < self._n_slots and slot not in self._free:
            self._free.append(slot)
            if not self._attached:  # the collecting rank has mapped it: the file can go
                self._attached = True
                self._slots.unlink()

    def close(self) -> None:
        """Removes the segment's file (if still there) and unmaps it."""
        if self._slots is not None:
            self._slots.unlink()
            self._slots.close()
            self._slots = None


class SharedBufferReceiver:
    """The collecting rank's side: copies buffers out of the processing ranks' segments."""

    def __init__(self) -> None:
        self._segments: dict[tuple[int, str], SharedFrameSlots] = {}

    def take(self, source: int, descriptor: Any) -> tuple[np.ndarray, int]:
        """Copies the buffer a descriptor from rank ``source`` names.

        Returns:
            (the bytes as a new uint8 array, the slot to send back).

        Raises:
            OmInvalidDataError: when the descriptor is malformed, names a slot or size outside
                the segment, or the segment cannot be mapped (another host, another token:
                send :data:`CANNOT_ATTACH` back, the slot is unknown).
        """
        try:
            path, token = str(descriptor["path"]), bytes(descriptor["token"])
            n_slots, slot_bytes = int(descriptor["slots"]), int(descriptor["slot_bytes"])
            slot, size = int(descriptor["slot"]), int(descriptor["nbytes"])
        except (KeyError, TypeError, ValueError) as error:
            raise OmInvalidDataError(f"shared buffer descriptor {descriptor!r}: {error}")
        if not (0 <= slot < n_slots and 0 <= size <= slot_bytes):
            raise OmInvalidDataError(f"shared buffer descriptor: slot {slot} of {n_slots}, "
                                     f"{size} bytes in slots of {slot_bytes}")
        segment = self._segments.get((source, path))
        if segment is None:
            try:
                segment = SharedFrameSlots.attach(path, n_slots, slot_bytes, token,
                                                  prefix="om_results")
            except (OSError, ValueError) as error:
                raise OmInvalidDataError(f"shared memory of rank {source} not visible here: "
                                         f"{error}")
            for key in [key for key in self._segments if key[0] == source]:
                self._segments.pop(key).close()  # the rank replaced its segment
            self._segments[(source, path)] = segment
        elif (segment.n_slots, segment.slot_bytes, segment.token) != (n_slots, slot_bytes, token):
            raise OmInvalidDataError(f"shared buffer descriptor of rank {source} does not "
                                     f"match its segment {path}")
        return segment.slot(slot)[:size].copy(), slot

    def close(self) -> None:
        """Unmaps every segment."""
        for segment in self._segments.values():
            segment.close()
        self._segments.clear()
