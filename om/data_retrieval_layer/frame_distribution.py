# SPDX-License-Identifier: GPL-3.0-or-later
"""Dealing assembled frames from the collecting rank to the processing ranks.

The collecting rank's :class:`FrameDealer` binds a ZeroMQ ROUTER socket; every processing rank's
:class:`FrameReceiver` connects a DEALER socket to it. The messages (msgpack maps, see
:mod:`om.lib.serialization`):

* receiver → dealer ``[b"hello", {"secret": s, "slots": n, "slot_bytes": b, "path": p | None,
  "token": t, "process": {...}}]``: the receiver takes ``n`` frames at a time (1 to
  :data:`MAX_SLOTS`); ``path``/``token`` name its
  :class:`~om.lib.shared_frame_slots.SharedFrameSlots` segment of ``n`` slots; ``s`` is the
  monitor's dealing secret (below); ``process`` identifies the receiver's process
  (:class:`~om.lib.rank_liveness.RankProcess`, optional);
* dealer → receiver ``[metadata]`` with ``metadata["slot"] = k`` and
  ``metadata["image_bytes"] = [bytes of each image]``: the frame's images lie one after the
  other in shared-memory slot ``k``; or ``[metadata, image, image, ...]``: the images travel
  in the message (the receiver is on another host, or has no shared memory), ``k`` being then
  only a credit;
* receiver → dealer ``[b"free", k]``: the receiver no longer reads slot ``k``.

A receiver never holds more than ``n`` frames, so the dealer knows which ranks have room without
any queue in the sockets: a frame goes to the receiver with the most free slots (the least busy
rank), or, when every slot of every receiver is taken, it is dropped and counted. A receiver
whose process is gone (looked at twice a second, :mod:`om.lib.rank_liveness`), or to which a
send fails, is forgotten: the frames it held are counted as ``frames_lost_with_rank``. Over shared
memory a frame costs one copy into the slot on the collecting rank and nothing on the processing
rank (its images are read-only views of the slot), instead of a TCP send and receive (measured:
~0.55 ms and ~0.45 ms of CPU per 2 MB frame on 127.0.0.1).

The dealer's port is reachable by every user of the host (and of the network when it binds to
an interface), so it registers only the receivers of this monitor: the collecting rank makes a
random secret at start-up (:func:`new_secret`), the processing ranks get it through MPI, and
every hello must carry it (compared in constant time). Every value of a hello is type- and
range-checked, and a segment is mapped (and unlinked) only when it is one of this user's
segments (:meth:`~om.lib.shared_frame_slots.SharedFrameSlots.attach`); a hello that fails any
check is logged in one line, counted as ``rejected_frame_receiver`` and ignored. At most
:data:`MAX_SLOTS` frames wait in the socket for one receiver (its send high-water mark).
"""

import dataclasses
import hmac
import itertools
import logging
import secrets
import time
from typing import Any

import numpy as np
import zmq

from om.lib.problems import problems
from om.lib.rank_liveness import RankProcess
from om.lib.serialization import pack, unpack
from om.lib.shared_frame_slots import SharedFrameSlots, UnsafeSegmentError
from om.lib.zmq_sockets import bind_socket

logger = logging.getLogger("om")

_HELLO = b"hello"
_FREE = b"free"
FRAMES_LOST_WITH_RANK = "frames_lost_with_rank"
"""Problem kind: frames dealt to a processing rank that died before it gave them back."""
_LIVENESS_PERIOD = 0.5  # s between two looks at the receivers' processes
_SENT, _DROPPED, _GONE = "sent", "dropped", "gone"  # what became of a frame sent to a receiver
MAX_SLOTS = 128
"""The most frames one receiver may hold (its slots); also the dealer's send high-water mark."""
MAX_SLOT_BYTES = 1 << 28
"""The largest slot a receiver may announce, bytes (a JUNGFRAU 1M frame takes 2 MiB)."""
SECRET_BYTES = 32
_TOKEN_BYTES = 16
_MAX_PATH_CHARS = 4096
# The largest message a receiver sends (a hello is ~150 bytes); larger ones cut the connection.
_MAX_MESSAGE_BYTES = 4096
REJECTED_RECEIVER = "rejected_frame_receiver"
"""Problem kind: a hello without the monitor's secret, with a value out of range, or naming a
file that is not one of this user's segments; the sender gets no frame."""
BAD_MESSAGE = "bad_message"
"""Problem kind: a malformed message between the dealer and a receiver."""


def new_secret() -> bytes:
    """A new random dealing secret (:data:`SECRET_BYTES` bytes), made once per monitor run."""
    return secrets.token_bytes(SECRET_BYTES)


def _describe(error: BaseException) -> str:
    """One short line for an error raised while decoding hostile input."""
    return f"{type(error).__name__}: {str(error)[:200]}"


def _peer(frame: zmq.Frame) -> str:
    """The sender's IP address, for the log line (where ZeroMQ can tell)."""
    try:
        return frame.get("Peer-Address")
    except (zmq.ZMQError, UnicodeDecodeError):
        return "an unknown address"


def _bounded_int(hello: dict[Any, Any], key: str, maximum: int) -> int:
    value = hello.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= maximum:
        raise ValueError(f"{key} {str(value)[:40]} is not an integer in [1, {maximum}]")
    return value


@dataclasses.dataclass(frozen=True)
class _Hello:
    n_slots: int
    slot_bytes: int
    path: str | None
    token: bytes
    process: RankProcess | None = None

    @classmethod
    def checked(cls, hello: Any, secret: bytes) -> "_Hello":
        """The hello's values once each is checked.

        Raises:
            ValueError: naming the first value that is missing, of another type or out of
                range, or a wrong secret.
        """
        if not isinstance(hello, dict):
            raise ValueError(f"a {type(hello).__name__}, not a map")
        offered = hello.get("secret")
        if not isinstance(offered, bytes) or not hmac.compare_digest(offered, secret):
            raise ValueError("wrong or missing secret (not a processing rank of this monitor)")
        n_slots = _bounded_int(hello, "slots", MAX_SLOTS)
        slot_bytes = _bounded_int(hello, "slot_bytes", MAX_SLOT_BYTES)
        process = hello.get("process")
        if process is not None:
            if not isinstance(process, dict):
                raise ValueError("process is not a map")
            process = RankProcess.from_message(process)  # KeyError, TypeError, ValueError
        path, token = hello.get("path"), hello.get("token")
        if path is None:
            return cls(n_slots, slot_bytes, None, b"", process)
        if not isinstance(path, str) or not 0 < len(path) <= _MAX_PATH_CHARS:
            raise ValueError(f"path is not a string of 1 to {_MAX_PATH_CHARS} characters")
        if not isinstance(token, bytes) or len(token) != _TOKEN_BYTES:
            raise ValueError(f"token is not {_TOKEN_BYTES} bytes")
        return cls(n_slots, slot_bytes, path, token, process)


@dataclasses.dataclass
class _Receiver:
    n_slots: int
    free: list[int]
    slots: SharedFrameSlots | None
    slot_bytes: int
    process: RankProcess | None = None


class FrameDealer:
    """The collecting rank's end: deals each frame to one receiver with a free slot.

    Used from one thread only (the frame assembler's). Poll :attr:`socket` for input and call
    :meth:`handle_messages` when it is readable.

    Args:
        host: the interface to bind (a free port is chosen).
        secret: the monitor's dealing secret (:func:`new_secret`); only hellos carrying it
            are accepted.
        what: what the frames are, for error messages.

    Raises:
        OmConfigurationError: when the socket cannot bind.
        ValueError: when ``secret`` is shorter than :data:`SECRET_BYTES`.
    """

    def __init__(self, host: str, *, secret: bytes,
                 what: str = "the frame distribution socket") -> None:
        if not isinstance(secret, bytes) or len(secret) < SECRET_BYTES:
            raise ValueError(f"the dealing secret must be {SECRET_BYTES} bytes or more")
        self._secret = secret
        # A receiver never holds more than MAX_SLOTS frames, so a full queue means a receiver
        # that gives slots back without reading them: its frames are dropped, not piled up.
        self.socket, self.endpoint = bind_socket(
            zmq.ROUTER, f"tcp://{host}:*", what=what,
            options={zmq.ROUTER_MANDATORY: 1, zmq.SNDHWM: MAX_SLOTS,
                     zmq.MAXMSGSIZE: _MAX_MESSAGE_BYTES})
        self._receivers: dict[bytes, _Receiver] = {}
        self._order: list[bytes] = []  # round robin among equally free receivers
        self._next_liveness_look = 0.0

    @property
    def receivers(self) -> int:
        """How many receivers said hello."""
        return len(self._receivers)

    @property
    def shared_memory_receivers(self) -> int:
        """How many receivers take their frames through shared memory."""
        return sum(receiver.slots is not None for receiver in self._receivers.values())

    def handle_messages(self) -> None:
        """Reads every waiting hello/free message; a malformed one is counted (``bad_message``,
        a hello ``rejected_frame_receiver``) and skipped, whatever its decoding raised."""
        while True:
            try:
                frames = self.socket.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                self._on_message([frame.bytes for frame in frames])
            except _RejectedHello as error:
                problems.report(REJECTED_RECEIVER, f"frame receiver hello from "
                                f"{_peer(frames[-1])} refused: {error}")
            except Exception as error:  # noqa: BLE001 - hostile input must not end the thread
                problems.report(BAD_MESSAGE, f"frame receiver message from {_peer(frames[-1])}: "
                                f"{_describe(error)}")

    def _on_message(self, parts: list[bytes]) -> None:
        if len(parts) != 3:
            raise ValueError(f"{len(parts) - 1} parts, expected 2")
        identity, kind, body = parts
        if kind == _FREE:
            receiver = self._receivers[identity]
            slot = unpack(body)
            if (not isinstance(slot, int) or not 0 <= slot < receiver.n_slots
                    or slot in receiver.free):
                raise ValueError(f"slot {str(slot)[:40]} freed but not taken")
            receiver.free.append(slot)
        elif kind == _HELLO:
            try:
                hello = _Hello.checked(unpack(body), self._secret)
                slots = self._attach(hello)
            except Exception as error:  # noqa: BLE001 - whatever the decoder raised
                raise _RejectedHello(_describe(error)) from None
            self._register(identity, hello, slots)
        else:
            raise ValueError(f"unknown message kind {kind[:16]!r}")

    @staticmethod
    def _attach(hello: _Hello) -> SharedFrameSlots | None:
        """The receiver's segment, mapped and unlinked; None when this host cannot see it.

        Raises:
            UnsafeSegmentError: when the path is not one of this user's segments.
        """
        if hello.path is None:
            return None
        try:
            slots = SharedFrameSlots.attach(hello.path, hello.n_slots, hello.slot_bytes,
                                            hello.token)
        except UnsafeSegmentError:
            raise
        except (OSError, ValueError) as error:  # e.g. a receiver on another host
            logger.info("frame receiver without shared memory (%s): frames go over the "
                        "network", error)
            return None
        slots.unlink()  # both ends have it mapped: nothing to leave behind
        return slots

    def _register(self, identity: bytes, hello: _Hello, slots: SharedFrameSlots | None) -> None:
        old = self._receivers.pop(identity, None)
        if old is not None and old.slots is not None:
            old.slots.close()
        self._receivers[identity] = _Receiver(hello.n_slots, list(range(hello.n_slots)), slots,
                                              hello.slot_bytes, hello.process)
        if identity not in self._order:
            self._order.append(identity)

    def deal(self, metadata: dict[str, Any], images: list[Any]) -> bool:
        """Sends a frame to the least busy receiver; False when none has a free slot.

        Args:
            metadata: msgpack-encodable map (``slot`` and ``image_bytes`` are added).
            images: the image parts (``zmq.Frame`` or bytes-like objects), in module order.
        """
        self.forget_gone_receivers()
        while self._receivers:
            chosen = self._least_busy()
            if chosen is None:
                return False
            outcome = self._send(chosen, metadata, images)
            if outcome != _GONE:  # a receiver that is gone is forgotten: try the next one
                return outcome == _SENT
        return False

    def forget_gone_receivers(self) -> None:
        """Forgets the receivers whose process is gone (looks at most twice a second)."""
        now = time.monotonic()
        if now < self._next_liveness_look:
            return
        self._next_liveness_look = now + _LIVENESS_PERIOD
        for identity, receiver in list(self._receivers.items()):
            why = receiver.process.why_gone() if receiver.process is not None else None
            if why is not None:
                self._forget(identity, why)

    def _least_busy(self) -> bytes | None:
        chosen: bytes | None = None
        most_free = 0
        for identity in self._order:
            receiver = self._receivers.get(identity)
            if receiver is not None and len(receiver.free) > most_free:
                chosen, most_free = identity, len(receiver.free)
        return chosen

    def _send(self, chosen: bytes, metadata: dict[str, Any], images: list[Any]) -> str:
        """Sends the frame to receiver ``chosen``: :data:`_SENT`, :data:`_DROPPED` (its queue is
        full) or :data:`_GONE` (the send failed: the receiver is forgotten)."""
        # The next search starts after this one, so that equally free ranks alternate.
        self._order.remove(chosen)
        self._order.append(chosen)
        receiver = self._receivers[chosen]
        slot = receiver.free.pop(0)
        buffers = [image.buffer if isinstance(image, zmq.Frame) else image for image in images]
        sizes = [memoryview(buffer).nbytes for buffer in buffers]
        message = {**metadata, "slot": slot, "image_bytes": sizes}
        try:
            if receiver.slots is not None and sum(sizes) <= receiver.slot_bytes:
                target = receiver.slots.slot(slot)
                offset = 0
                for buffer, size in zip(buffers, sizes):
                    target[offset:offset + size] = np.frombuffer(buffer, dtype=np.uint8)
                    offset += size
                self.socket.send_multipart([chosen, pack(message)], flags=zmq.NOBLOCK)
            else:
                self.socket.send_multipart([chosen, pack(message), *images],
                                           flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:  # its queue is full (it gives slots back unread): drop the frame
            receiver.free.append(slot)
            return _DROPPED
        except zmq.ZMQError as error:  # the receiver left: forget it
            receiver.free.append(slot)  # this frame never reached it
            self._forget(chosen, f"a send to it failed: {error}")
            return _GONE
        return _SENT

    def _forget(self, identity: bytes, why: str | None = None) -> None:
        """Forgets a receiver; with ``why`` (it is gone), counts the frames it held."""
        receiver = self._receivers.get(identity)
        if why is not None and receiver is not None:
            held = receiver.n_slots - len(receiver.free)
            logger.warning("frame receiver gone (%s): %d frames it held are lost", why, held)
            if held:
                problems.report(FRAMES_LOST_WITH_RANK, f"{held} frames dealt to a processing "
                                f"rank that is gone ({why})", count=held)
        receiver = self._receivers.pop(identity, None)
        if receiver is not None and receiver.slots is not None:
            receiver.slots.close()
        if identity in self._order:
            self._order.remove(identity)

    def close(self) -> None:
        """Closes the socket and unmaps every receiver's slots (idempotent)."""
        for identity in list(self._receivers):
            self._forget(identity)
        if self.socket is not None:
            self.socket.close(0)
            self.socket = None


class _RejectedHello(Exception):
    """A hello that failed a check (its message says which)."""


@dataclasses.dataclass
class ReceivedFrame:
    """A frame dealt to this receiver.

    Attributes:
        metadata: the map the dealer sent (``slot`` and ``image_bytes`` included).
        images: one read-only buffer per image part, in module order; valid until
            :meth:`FrameReceiver.release`.
        slot: the slot (credit) to give back.
    """

    metadata: dict[str, Any]
    images: list[memoryview]
    slot: int


class FrameReceiver:
    """A processing rank's end: takes up to ``n_slots`` frames at a time from a :class:`FrameDealer`.

    Args:
        endpoint: the dealer's URL.
        n_slots: frames held at most (being processed or waiting), 1 to :data:`MAX_SLOTS`.
        slot_bytes: the largest frame, bytes, 1 to :data:`MAX_SLOT_BYTES` (larger frames
            come over the network).
        secret: the dealer's secret (:func:`new_secret` on the collecting rank).
        shared_memory: offer shared-memory slots (the dealer uses them when it runs on the same
            host); without, or when ``/dev/shm`` has no room, frames come over the network.

    Raises:
        ValueError: when ``n_slots`` or ``slot_bytes`` is out of range (the dealer would
            refuse the hello).
    """

    def __init__(self, endpoint: str, *, n_slots: int, slot_bytes: int, secret: bytes,
                 shared_memory: bool = True) -> None:
        if not 1 <= n_slots <= MAX_SLOTS or not 1 <= slot_bytes <= MAX_SLOT_BYTES:
            raise ValueError(f"{n_slots} frame slots of {slot_bytes} bytes: at most "
                             f"{MAX_SLOTS} slots of {MAX_SLOT_BYTES} bytes")
        self._slots: SharedFrameSlots | None = None
        if shared_memory:
            try:
                self._slots = SharedFrameSlots.create(n_slots, slot_bytes)
            except OSError as error:
                logger.warning("no shared memory for %d frames of %d bytes (%s): frames come "
                               "over the network", n_slots, slot_bytes, error)
        self._socket = zmq.Context.instance().socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.RCVHWM, 0)  # the dealer's credits bound the queue
        self._socket.connect(endpoint)
        hello = {"secret": secret, "slots": n_slots, "slot_bytes": slot_bytes,
                 "path": self._slots.path if self._slots else None,
                 "token": self._slots.token if self._slots else b"",
                 "process": RankProcess.of_this_process(-1).to_message()}
        self._socket.send_multipart([_HELLO, pack(hello)])
        self._n_slots = n_slots

    def receive(self, timeout_ms: int) -> ReceivedFrame | None:
        """Waits up to ``timeout_ms`` for a frame; None when none came or it was malformed.

        A malformed message is counted (``bad_message``) and, when its slot is known, the
        slot is given back.
        """
        if not self._socket.poll(timeout_ms):
            return None
        parts = self._socket.recv_multipart(copy=False)
        try:
            metadata = unpack(parts[0].buffer)
            slot = int(metadata["slot"])
            sizes = [int(size) for size in metadata["image_bytes"]]
            if not 0 <= slot < self._n_slots:
                raise ValueError(f"slot {slot} outside [0, {self._n_slots})")
        except Exception as error:  # noqa: BLE001 - a bad message must not end the rank
            problems.report(BAD_MESSAGE, f"frame from the collecting rank: {_describe(error)}")
            return None
        if len(parts) > 1:
            images = [part.buffer.toreadonly() for part in parts[1:]]
        elif self._slots is not None and sum(sizes) <= self._slots.slot_bytes:
            data = memoryview(self._slots.slot(slot)).toreadonly()
            offsets = [0, *itertools.accumulate(sizes)]
            images = [data[start:end] for start, end in itertools.pairwise(offsets)]
        else:
            problems.report(BAD_MESSAGE, f"frame in slot {slot} without shared memory")
            self._socket.send_multipart([_FREE, pack(slot)])
            return None
        return ReceivedFrame(metadata, images, slot)

    def release(self, frame: ReceivedFrame) -> None:
        """Gives the frame's slot back; its images must not be read afterwards."""
        frame.images = []
        self._socket.send_multipart([_FREE, pack(frame.slot)])

    def close(self) -> None:
        """Closes the socket and the shared memory (idempotent)."""
        if self._socket is not None:
            self._socket.close(0)
            self._socket = None
        if self._slots is not None:
            self._slots.unlink()
            self._slots.close()
            self._slots = None

