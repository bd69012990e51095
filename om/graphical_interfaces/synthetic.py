# SPDX-License-Identifier: GPL-3.0-or-later
"""Realistic synthetic ``omdata`` and ``omframedata`` messages, to try the GUIs without a monitor.

Used by the GUI tests, and runnable as a stand-in publisher::

    python -m om.graphical_interfaces.synthetic tcp://127.0.0.1:12321 --rate 2

then ``om_crystallography_gui.py tcp://127.0.0.1:12321`` and ``om_frame_viewer.py
tcp://127.0.0.1:12321``. It also answers ``resetplots`` on ``--responding-url``.
"""

import argparse
import time
from typing import Any

import numpy as np

from om.lib.serialization import pack

BEAM_ENERGY = 9500.0  # eV
DETECTOR_DISTANCE = 120.0  # mm
PIXEL_SIZE = 75e-6  # m
IMAGE_SHAPE = (1100, 1100)
BEAM_CENTER = (545.3, 560.8)  # [col, row]
POWDER_RING_RADII = (140.0, 230.0, 310.0, 420.0)  # pixels


def _add_gaussians(
    image: np.ndarray,
    cols: np.ndarray,
    rows: np.ndarray,
    amplitudes: np.ndarray,
    sigma: float = 1.3,
    half_width: int = 4,
) -> None:
    """Adds 2-d Gaussian spots centred on pixel centres (col, row) to ``image`` in place."""
    offsets = np.arange(-half_width, half_width + 1)
    for col, row, amplitude in zip(cols, rows, amplitudes):
        c0, r0 = round(col), round(row)
        rr = r0 + offsets
        cc = c0 + offsets
        keep_r = (rr >= 0) & (rr < image.shape[0])
        keep_c = (cc >= 0) & (cc < image.shape[1])
        if not keep_r.any() or not keep_c.any():
            continue
        gy = np.exp(-((rr[keep_r] - row) ** 2) / (2 * sigma**2))
        gx = np.exp(-((cc[keep_c] - col) ** 2) / (2 * sigma**2))
        image[np.ix_(rr[keep_r], cc[keep_c])] += amplitude * np.outer(gy, gx)


def detector_gaps(shape: tuple[int, int] = IMAGE_SHAPE) -> np.ndarray:
    """A boolean mask of the gaps between modules of a JUNGFRAU-like assembled image."""
    gaps = np.zeros(shape, dtype=bool)
    gaps[:, shape[1] // 2 - 6 : shape[1] // 2 + 6] = True
    for row in range(270, shape[0], 275):
        gaps[row : row + 8, :] = True
    return gaps


def make_omdata(
    seed: int = 0,
    *,
    num_events: int = 123_456,
    hit_rate: float = 27.5,
    history_length: int = 600,
    shape: tuple[int, int] = IMAGE_SHAPE,
    responding_url: str | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """An ``omdata`` message's content: powder pattern with spots on rings, history, peakogram."""
    rng = np.random.default_rng(seed)
    now = time.time() if now is None else now
    powder = np.zeros(shape, dtype=np.float32)
    num_spots = 3000
    radii = rng.choice(POWDER_RING_RADII, num_spots) + rng.normal(0, 1.0, num_spots)
    angles = rng.uniform(0, 2 * np.pi, num_spots)
    cols = BEAM_CENTER[0] + radii * np.cos(angles)
    rows = BEAM_CENTER[1] + radii * np.sin(angles)
    _add_gaussians(powder, cols, rows, rng.gamma(2.0, 150.0, num_spots).astype(np.float32))
    # a diffuse background of weaker random spots
    weak = 2000
    _add_gaussians(
        powder,
        rng.uniform(0, shape[1], weak),
        rng.uniform(0, shape[0], weak),
        rng.gamma(1.5, 20.0, weak),
    )
    timestamps = now - np.linspace(history_length / 5.0, 0.0, history_length)
    history = np.clip(
        hit_rate + np.cumsum(rng.normal(0, 0.6, history_length)) - 3 * np.sin(timestamps / 7), 0, 100
    )
    history[-1] = hit_rate
    radius_bin, intensity_bin = 5.0, 20.0
    peak_radii = np.abs(rng.normal(250, 120, 20_000))
    peak_intensities = rng.gamma(1.8, 250.0, 20_000) * np.exp(-peak_radii / 600)
    peakogram, _, _ = np.histogram2d(
        peak_radii,
        peak_intensities,
        bins=(100, 150),
        range=((0, 100 * radius_bin), (0, 150 * intensity_bin)),
    )
    return {
        "timestamp": float(now),
        "hit_rate_timestamp_history": timestamps.astype(np.float64),
        "hit_rate_history": history.astype(np.float64),
        "hit_rate": float(hit_rate),
        "virtual_powder_plot": powder,
        "peakogram": peakogram.astype(np.float32),
        "peakogram_radius_bin_size": radius_bin,
        "peakogram_intensity_bin_size": intensity_bin,
        "num_events": int(num_events),
        "num_hits": int(num_events * hit_rate / 100),
        "events_per_second": 987.6,
        "beam_energy": BEAM_ENERGY,
        "detector_distance": DETECTOR_DISTANCE,
        "pixel_size": PIXEL_SIZE,
        "beam_center": [BEAM_CENTER[0], BEAM_CENTER[1]],
        "problems": {"incomplete_frame": 3, "bad_header": 1},
        "responding_url": responding_url,
    }


def make_omframedata(
    seed: int = 0,
    *,
    event_id: str = "run0042/event_000123",
    num_peaks: int = 200,
    shape: tuple[int, int] = IMAGE_SHAPE,
    now: float | None = None,
) -> dict[str, Any]:
    """An ``omframedata`` message's content: a noisy frame with gaps and Gaussian spots."""
    rng = np.random.default_rng(seed)
    frame = rng.poisson(0.3, shape).astype(np.float32)
    gaps = detector_gaps(shape)
    margin = 15
    cols = rng.uniform(margin, shape[1] - margin, num_peaks * 2)
    rows = rng.uniform(margin, shape[0] - margin, num_peaks * 2)
    keep = ~gaps[rows.astype(int), cols.astype(int)]
    cols, rows = np.round(cols[keep][:num_peaks]), np.round(rows[keep][:num_peaks])
    intensities = rng.gamma(3.0, 40.0, cols.size)
    _add_gaussians(frame, cols, rows, intensities)
    frame[gaps] = np.nan
    return {
        "frame_data": frame,
        "peak_list_x_in_frame": cols.astype(np.float64),
        "peak_list_y_in_frame": rows.astype(np.float64),
        "peak_list_intensity": (intensities * 2 * np.pi * 1.3**2).astype(np.float64),
        "timestamp": float(time.time() if now is None else now),
        "event_id": event_id,
        "frame_is_hit": True,
        "num_peaks": int(cols.size),
        "beam_energy": BEAM_ENERGY,
        "detector_distance": DETECTOR_DISTANCE,
        "pixel_size": PIXEL_SIZE,
        "beam_center": [BEAM_CENTER[0], BEAM_CENTER[1]],
    }


def encode(tag: str, content: dict[str, Any]) -> list[bytes]:
    """The two frames of a message: ``[tag, msgpack payload]``."""
    return [tag.encode(), pack(content)]


def main(argv: list[str] | None = None) -> int:
    """Publishes synthetic messages until Ctrl+C."""
    import zmq

    parser = argparse.ArgumentParser(
        prog="python -m om.graphical_interfaces.synthetic",
        description="Publishes synthetic omdata and omframedata messages to try the GUIs.",
    )
    parser.add_argument("url", help="URL to bind the PUB socket to, e.g. tcp://127.0.0.1:12321")
    parser.add_argument("--rate", type=float, default=2.0, help="messages per second per tag")
    parser.add_argument(
        "--responding-url", help="URL to bind a ROUTER answering resetplots (e.g. tcp://127.0.0.1:12322)"
    )
    args = parser.parse_args(argv)
    context = zmq.Context.instance()
    publisher = context.socket(zmq.PUB)
    publisher.setsockopt(zmq.SNDHWM, 4)
    publisher.bind(args.url)
    router = None
    if args.responding_url:
        router = context.socket(zmq.ROUTER)
        router.bind(args.responding_url)
    print(f"synthetic: publishing omdata and omframedata on {args.url}"
          + (f", answering resetplots on {args.responding_url}" if router is not None else "")
          + "; Ctrl+C stops", flush=True)
    events, seed = 0, 0
    try:
        while True:
            seed += 1
            events += int(1000 / args.rate)
            hit_rate = 25 + 5 * np.sin(seed / 10)
            publisher.send_multipart(
                encode(
                    "omdata",
                    make_omdata(
                        seed, num_events=events, hit_rate=hit_rate, responding_url=args.responding_url
                    ),
                )
            )
            publisher.send_multipart(
                encode("omframedata", make_omframedata(seed, event_id=f"synthetic/{seed:06d}"))
            )
            deadline = time.monotonic() + 1.0 / args.rate
            while router is not None and router.poll(max(0, int((deadline - time.monotonic()) * 1000))):
                identity, empty, request = router.recv_multipart()[:3]
                reply = b"ok: plots reset" if request == b"resetplots" else b"error: unknown request"
                router.send_multipart([identity, empty, reply])
            time.sleep(max(0.0, deadline - time.monotonic()))
    except KeyboardInterrupt:
        return 0
    finally:
        publisher.close(linger=0)
        if router is not None:
            router.close(linger=0)


if __name__ == "__main__":
    raise SystemExit(main())
