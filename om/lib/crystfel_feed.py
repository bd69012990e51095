# SPDX-License-Identifier: GPL-3.0-or-later
"""Live frames for CrystFEL's ``indexamajig --zmq-input`` (CrystFEL 0.10 and later).

Two ways, both with the same msgpack payload (``docs/crystfel.md``):

- **SUB mode** (``--zmq-subscribe=ondaframedata``): two-part messages ``[b"ondaframedata",
  payload]`` on the monitor's PUB socket. indexamajig reads one ZeroMQ frame at a time and
  skips frames of 15 bytes or less, which drops the tag. At most ``max_rate`` frames per
  second go out, so indexamajig is never flooded.
- **REQ mode** (``--zmq-request=next``): each ``next`` request on the responding socket gets one
  payload, a single frame with no tag, of the oldest queued frame not yet served: several
  indexamajig workers (``-j N``) get different frames. A request waits while the queue is empty.
  Frames are queued only while a client is there (it asked within ``REQUEST_PATIENCE`` s).
  Requests wait in arrival order, one per client (ZeroMQ identity): a second ``next`` from a
  client whose first still waits is refused with an error reply, as is a request that finds
  :data:`MAX_WAITING_CLIENTS` clients waiting (both counted as ``request_refused``); no waiting
  client is ever dropped to make room, so one client cannot push indexamajig's workers out.

The feed tells the collecting rank how many frames a second it wants from the processing ranks
(:meth:`CrystfelFrameFeed.frames_wanted_per_second`, ``om/lib/frame_demand.py``).

Payload facts from CrystFEL's ``libcrystfel/src/image-msgpack.c``: a top-level map; the image
under the key named by the geometry's ``data`` line, as ``{type: '<f4', shape: [ss, fs],
data: bin}``; the peak list under the ``peak_list`` key as a map of equal-length msgpack arrays
``fs``, ``ss``, ``intensity`` of 64-bit floats; per-frame values (``beam_energy`` in eV,
``detector_distance`` in mm) under the keys the geometry names. No key is a prefix of another,
since indexamajig compares only the length of the key it finds.
"""

import collections
import math
import time
from typing import Any, Literal

import numpy as np

from om.lib.broadcast import DataBroadcaster
from om.lib.problems import problems
from om.lib.responding_socket import RespondingSocket
from om.lib.serialization import pack

SUB_MODE_TAG = "ondaframedata"
NEXT_REQUEST = b"next"
# s without a request after which no REQ client counts as connected: its queued frames are
# dropped (a client that comes later gets live frames) and it no longer asks for frames.
REQUEST_PATIENCE = 10.0
MAX_WAITING_CLIENTS = 256
"""The most clients whose ``next`` request waits for a frame."""
REQUEST_REFUSED = "request_refused"
"""Problem kind: a ``next`` request refused (its client's previous one still waits, or
:data:`MAX_WAITING_CLIENTS` clients wait); the client got an error reply."""


def crystfel_payload(result: dict[str, Any]) -> bytes:
    """Builds the msgpack payload indexamajig reads from one processing result.

    Args:
        result: a crystallography result holding ``detector_data`` (float32 (ss, fs) slab,
            photons), ``peak_fs``/``peak_ss``/``peak_intensity`` (float64 (n,)), ``beam_energy``
            (eV), ``detector_distance`` (mm), ``timestamp`` (s), ``event_id`` and ``frame_is_hit``.

    Returns:
        The msgpack bytes of the map with keys ``detector_data``, ``peak_list``,
        ``beam_energy``, ``detector_distance``, ``timestamp``, ``event_id``, ``frame_is_hit``.
    """
    frame = np.ascontiguousarray(result["detector_data"], dtype="<f4")
    return pack({
        "detector_data": {"type": "<f4", "shape": list(frame.shape),
                          "data": memoryview(frame).cast("B")},
        # Pixel-index positions (pixel i centred on i): indexamajig adds the half pixel itself
        # unless given --no-half-pixel-shift.
        "peak_list": {
            "fs": np.asarray(result["peak_fs"], dtype=np.float64).tolist(),
            "ss": np.asarray(result["peak_ss"], dtype=np.float64).tolist(),
            "intensity": np.asarray(result["peak_intensity"], dtype=np.float64).tolist(),
            # om's addition (indexamajig reads only the keys it knows): saturated pixels
            # around each peak (om/processing_layer/saturation.py).
            "saturated_pixels": [int(n) for n in result.get("peak_saturated_pixels", ())],
        },
        "beam_energy": float(result["beam_energy"]),
        "detector_distance": float(result["detector_distance"]),
        "timestamp": float(result["timestamp"]),
        "event_id": str(result["event_id"]),
        "frame_is_hit": bool(result["frame_is_hit"]),
    })


class CrystfelFrameFeed:
    """Chooses frames for indexamajig and serves them in SUB and REQ mode.

    Args:
        broadcaster: the monitor's PUB socket (SUB mode).
        responding_socket: the monitor's ROUTER socket (REQ mode), or None.
        frames: which frames to feed: ``"hits"``, ``"all"`` (of those the processing ranks
            send) or ``"none"``.
        interval: feed every Nth chosen frame.
        max_rate: the most frames per second sent in SUB mode.
        queue_length: frames kept for REQ clients (the oldest are dropped first).
    """

    def __init__(self, *, broadcaster: DataBroadcaster, responding_socket: RespondingSocket | None,
                 frames: Literal["hits", "all", "none"], interval: int, max_rate: float,
                 queue_length: int) -> None:
        self._broadcaster = broadcaster
        self._responder = responding_socket
        self._frames = frames
        self._interval = max(1, interval)
        self._min_period = 1.0 / max_rate if max_rate > 0 else 0.0
        self._last_sent = -float("inf")
        self._seen = 0
        self._queue: collections.deque[bytes] = collections.deque(maxlen=max(1, queue_length))
        # Identities whose request waits, oldest first (a dict: one entry per client).
        self._waiting: dict[bytes, None] = {}
        self._max_rate = max_rate
        self._last_request = -math.inf
        self.frames_published = 0
        self.frames_served = 0
        if responding_socket is not None:
            responding_socket.handlers[NEXT_REQUEST] = self._on_next

    def offer(self, result: dict[str, Any]) -> None:
        """Feeds the result's frame to indexamajig if it is chosen (it must hold the frame)."""
        if self._frames == "none" or "detector_data" not in result:
            return
        if self._frames == "hits" and not result["frame_is_hit"]:
            return
        self._seen += 1
        if self._seen % self._interval:
            return
        now = time.monotonic()
        publish = (now - self._last_sent >= self._min_period
                   and self._broadcaster.wants(SUB_MODE_TAG))
        queue = self._req_client_connected(now)
        if not publish and not queue:
            return  # encoding a frame (megabytes) nobody gets would cost the collecting rank
        payload = crystfel_payload(result)
        if publish:
            self._last_sent = now
            self._broadcaster.send_bytes(SUB_MODE_TAG, payload)
            self.frames_published += 1
        if queue:
            self._queue.append(payload)
            self._serve_waiting()

    def _req_client_connected(self, now: float) -> bool:
        """Whether a REQ client waits or asked within the last ``REQUEST_PATIENCE`` s."""
        return self._responder is not None and (
            bool(self._waiting) or now - self._last_request < REQUEST_PATIENCE)

    def frames_wanted_per_second(self) -> float:
        """Frames per second this feed wants from the processing ranks: ``inf`` while a REQ
        client asked within the last ``REQUEST_PATIENCE`` s, twice the SUB mode's
        ``max_rate`` while someone subscribed to it, else 0."""
        if self._frames == "none":
            return 0.0
        if self._req_client_connected(time.monotonic()):
            return math.inf
        self._queue.clear()
        if not self._broadcaster.wants(SUB_MODE_TAG):
            return 0.0
        return 2.0 * self._max_rate if self._max_rate > 0 else math.inf

    def _on_next(self, identity: bytes) -> bytes | None:
        self._last_request = time.monotonic()
        if identity in self._waiting:
            problems.report(REQUEST_REFUSED, "a 'next' request from a client whose previous "
                            "one still waits (refused)")
            return b"error: your previous 'next' request still waits"
        if len(self._waiting) >= MAX_WAITING_CLIENTS:
            problems.report(REQUEST_REFUSED, f"a 'next' request refused: "
                            f"{MAX_WAITING_CLIENTS} clients wait already")
            return b"error: too many clients waiting for frames, ask again later"
        self._waiting[identity] = None
        self._serve_waiting()
        return None

    def _serve_waiting(self) -> None:
        while self._queue and self._waiting:
            identity = next(iter(self._waiting))
            del self._waiting[identity]
            if self._responder.reply(identity, self._queue[0]):
                self._queue.popleft()
                self.frames_served += 1
