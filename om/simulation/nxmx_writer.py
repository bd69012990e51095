# SPDX-License-Identifier: GPL-3.0-or-later
"""Writes NXmx master and data files as Jungfraujoch's and DECTRIS's writers lay them out, and
announces finalized data files like Jungfraujoch's writer (for tests and demos).

Layout (the published one: Jungfraujoch writer README, DECTRIS FileWriter, NeXus NXmx):

* data files ``<prefix>_data_NNNNNN.h5`` (N from 1), each with ``/entry/data/data`` of shape
  (n, ss, fs) (one chunk per image, optionally bitshuffle/LZ4 compressed as HDF5 filter 32008)
  and the attributes ``image_nr_low`` / ``image_nr_high`` (1-based numbers of its first and
  last image in the acquisition). A data file is written as ``<name>.tmp`` and renamed when
  complete, as Jungfraujoch does.
* a master file ``<prefix>_master.h5`` with ``/entry/definition = "NXmx"``,
  ``/entry/start_time`` (ISO 8601, UTC), ``/entry/instrument/beam/incident_wavelength`` (Å),
  ``/entry/instrument/detector/{detector_distance, distance}`` (m), ``beam_center_x``/``_y``
  (pixels), ``x_pixel_size``/``y_pixel_size`` (m), ``frame_time`` / ``count_time`` (s),
  ``pixel_mask`` (uint32, non-zero = bad; also under ``detectorSpecific``), and the images as
  either external links ``/entry/data/data_NNNNNN -> <data file>:/entry/data/data``
  (``layout="links"``, DECTRIS and older Jungfraujoch) or one virtual data set
  ``/entry/data/data`` over the data files (``layout="vds"``, newer Jungfraujoch).
* finalized-file notifications: one JSON message per data file on a ZeroMQ PUB socket, with
  the fields of Jungfraujoch's writer (``filename`` relative to the writer's folder,
  ``nimages``, ``file_number`` from 0, ``beam_x_pxl``, ``beam_y_pxl``, ``detector_distance_m``,
  ``incident_energy_eV``, ``pixel_size_m``, ``detector_width_pxl``, ``detector_height_pxl``,
  ``saturation``, ``underload``, ``sample_name``, ``run_name``, ``run_number``, ``user_data``).
  The socket is an XPUB (subscribers see a PUB socket) so the writer can wait for subscribers.

``om_simulator.py files DIRECTORY PREFIX [options]`` writes synthetic images
with Gaussian Bragg spots (``--help`` lists the options).
"""

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import sys
import time
from typing import Any, Callable, Sequence

import h5py
import hdf5plugin
import numpy as np
import zmq

HC_EV_ANGSTROM = 12398.419843320026


def _spot_positions(rng: np.random.Generator, shape: tuple[int, int], n_spots: int,
                    min_radius: float, max_radius: float, separation: float) -> np.ndarray:
    centre = ((shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0)
    positions: list[tuple[float, float]] = []
    for _ in range(100 * n_spots):
        if len(positions) == n_spots:
            break
        radius = rng.uniform(min_radius, max_radius)
        angle = rng.uniform(0.0, 2.0 * np.pi)
        fs = centre[0] + radius * np.cos(angle)
        ss = centre[1] + radius * np.sin(angle)
        if not (4 <= fs <= shape[1] - 5 and 4 <= ss <= shape[0] - 5):
            continue
        if all((fs - f) ** 2 + (ss - s) ** 2 >= separation ** 2 for f, s in positions):
            positions.append((fs, ss))
    return np.array(positions, dtype=np.float64).reshape(-1, 2)


def gaussian_spot_images(n_images: int, shape: tuple[int, int] = (512, 512), *, n_spots: int = 20,
                         seed: int = 0, dtype: Any = np.uint16, background: float = 1.0,
                         amplitude: tuple[float, float] = (40.0, 100.0), sigma: float = 1.0,
                         min_radius: float = 40.0, max_radius: float = 200.0,
                         defective_pixels: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """Synthetic diffraction images: Poisson background and Gaussian Bragg spots, in photons.

    Args:
        n_images: number of images.
        shape: ``(ss, fs)`` of an image, pixels.
        n_spots: spots per image, at least ``4 * sigma`` from the edges and 12 pixels apart.
        seed: random seed (the same seed gives the same images).
        dtype: an integer dtype of the stored images.
        background: mean background, photons per pixel.
        amplitude: range of the spots' peak values, photons.
        sigma: the spots' Gaussian width, pixels.
        min_radius, max_radius: range of the spots' distance from the image centre
            ``((fs - 1) / 2, (ss - 1) / 2)``, pixels.
        defective_pixels: pixels per image set to the all-ones value of an unsigned dtype
            (or the minimum of a signed one): the mark of defective pixels.

    Returns:
        ``(images, spots)``: ``dtype`` (n_images, ss, fs) images and, per image, a float64
        (n_spots, 2) array of spot centres ``(fs, ss)`` in pixel index units (the centre of
        pixel ``[j, i]`` is ``(i, j)``).
    """
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    images = np.empty((n_images, *shape), dtype=dtype)
    spots = []
    half = int(np.ceil(4 * sigma))
    offsets = np.arange(-half, half + 1)
    for index in range(n_images):
        image = rng.poisson(background, shape).astype(np.float64)
        positions = _spot_positions(rng, shape, n_spots, min_radius, max_radius, 12.0)
        for fs, ss in positions:
            peak = rng.uniform(*amplitude)
            rows = round(ss) + offsets
            cols = round(fs) + offsets
            window = np.exp(-((rows[:, None] - ss) ** 2 + (cols[None, :] - fs) ** 2)
                            / (2.0 * sigma ** 2))
            image[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] += peak * window
        stored = np.rint(image).astype(dtype)
        if defective_pixels:
            info = np.iinfo(dtype)
            mark = info.max if dtype.kind == "u" else info.min
            flat = rng.choice(stored.size, defective_pixels, replace=False)
            stored.reshape(-1)[flat] = mark
        images[index] = stored
        spots.append(positions)
    return images, spots


def _compression(name: str | None) -> dict[str, Any]:
    if name in (None, "none"):
        return {}
    if name == "bslz4":
        return dict(hdf5plugin.Bitshuffle(cname="lz4"))
    raise ValueError(f"unknown compression {name!r} (none or bslz4)")


def write_data_file(path: str | os.PathLike, images: np.ndarray, first_image_number: int,
                    compression: str | None = None) -> pathlib.Path:
    """Writes one data file: ``/entry/data/data`` (n, ss, fs), one chunk per image.

    Args:
        path: the file to write (written as ``path + ".tmp"``, then renamed).
        images: (n, ss, fs) images of any numeric dtype.
        first_image_number: 1-based number of the first image in the acquisition.
        compression: ``None``/``"none"`` or ``"bslz4"``.

    Returns:
        The path written.
    """
    path = pathlib.Path(path)
    temporary = path.with_name(path.name + ".tmp")
    with h5py.File(temporary, "w") as handle:
        entry = handle.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        data = entry.create_group("data")
        data.attrs["NX_class"] = "NXdata"
        dataset = data.create_dataset("data", data=images, chunks=(1, *images.shape[1:]),
                                      **_compression(compression))
        dataset.attrs["image_nr_low"] = np.int32(first_image_number)
        dataset.attrs["image_nr_high"] = np.int32(first_image_number + len(images) - 1)
    os.replace(temporary, path)
    return path


@dataclasses.dataclass
class NxmxMetadata:
    """What the master file and the notifications tell about the acquisition.

    Attributes:
        wavelength_A: incident wavelength, Å (photon energy = 12398.42 / wavelength eV).
        detector_distance_m: detector distance, m.
        beam_center_px: ``(x, y)`` beam centre, pixels (fs, ss).
        pixel_size_m: pixel size, m.
        frame_time_s: time between images, s.
        start_time: acquisition start, s since the epoch.
        pixel_mask: optional uint32 (ss, fs) mask, non-zero = bad pixel.
        sample_name, run_name, run_number: as Jungfraujoch's notifications carry them.
    """

    wavelength_A: float = 1.0
    detector_distance_m: float = 0.1
    beam_center_px: tuple[float, float] | None = None
    pixel_size_m: float = 75e-6
    frame_time_s: float = 0.01
    start_time: float = dataclasses.field(default_factory=time.time)
    pixel_mask: np.ndarray | None = None
    sample_name: str = "lysozyme"
    run_name: str = "om_test"
    run_number: int = 1

    @property
    def incident_energy_eV(self) -> float:
        return HC_EV_ANGSTROM / self.wavelength_A


def _iso(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"


def _scalar(group: h5py.Group, name: str, value: Any, units: str | None = None) -> None:
    dataset = group.create_dataset(name, data=value)
    if units is not None:
        dataset.attrs["units"] = units


def write_master_file(path: str | os.PathLike, data_files: Sequence[tuple[str, int]],
                      frame_shape: tuple[int, int], dtype: Any, metadata: NxmxMetadata,
                      layout: str = "links") -> pathlib.Path:
    """Writes the NXmx master file.

    Args:
        path: the master file.
        data_files: ``(name relative to the master's folder, number of images)`` per data
            file, in order.
        frame_shape: ``(ss, fs)`` of an image.
        dtype: the images' dtype.
        metadata: the acquisition's metadata.
        layout: ``"links"`` (``/entry/data/data_NNNNNN`` external links) or ``"vds"``
            (a virtual ``/entry/data/data``).

    Returns:
        The path written.
    """
    path = pathlib.Path(path)
    total = sum(count for _, count in data_files)
    beam_x, beam_y = metadata.beam_center_px or ((frame_shape[1] - 1) / 2, (frame_shape[0] - 1) / 2)
    with h5py.File(path, "w") as handle:
        entry = handle.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        entry.create_dataset("definition", data="NXmx")
        entry.create_dataset("start_time", data=_iso(metadata.start_time))
        entry.create_dataset("end_time", data=_iso(metadata.start_time
                                                   + total * metadata.frame_time_s))
        data = entry.create_group("data")
        data.attrs["NX_class"] = "NXdata"
        if layout == "links":
            for number, (name, _) in enumerate(data_files, start=1):
                data[f"data_{number:06d}"] = h5py.ExternalLink(name, "/entry/data/data")
        elif layout == "vds":
            virtual = h5py.VirtualLayout((total, *frame_shape), dtype=dtype)
            first = 0
            for name, count in data_files:
                virtual[first:first + count] = h5py.VirtualSource(
                    name, "/entry/data/data", shape=(count, *frame_shape))
                first += count
            dataset = data.create_virtual_dataset("data", virtual)
            dataset.attrs["image_nr_low"] = np.int32(1)
            dataset.attrs["image_nr_high"] = np.int32(total)
        else:
            raise ValueError(f"unknown layout {layout!r} (links or vds)")
        instrument = entry.create_group("instrument")
        instrument.attrs["NX_class"] = "NXinstrument"
        beam = instrument.create_group("beam")
        beam.attrs["NX_class"] = "NXbeam"
        _scalar(beam, "incident_wavelength", metadata.wavelength_A, "angstrom")
        detector = instrument.create_group("detector")
        detector.attrs["NX_class"] = "NXdetector"
        _scalar(detector, "beam_center_x", beam_x, "pixel")
        _scalar(detector, "beam_center_y", beam_y, "pixel")
        _scalar(detector, "detector_distance", metadata.detector_distance_m, "m")
        _scalar(detector, "distance", metadata.detector_distance_m, "m")
        _scalar(detector, "x_pixel_size", metadata.pixel_size_m, "m")
        _scalar(detector, "y_pixel_size", metadata.pixel_size_m, "m")
        _scalar(detector, "frame_time", metadata.frame_time_s, "s")
        _scalar(detector, "count_time", metadata.frame_time_s, "s")
        specific = detector.create_group("detectorSpecific")
        _scalar(specific, "nimages", np.int64(total))
        _scalar(specific, "x_pixels_in_detector", np.uint32(frame_shape[1]))
        _scalar(specific, "y_pixels_in_detector", np.uint32(frame_shape[0]))
        if metadata.pixel_mask is not None:
            detector.create_dataset("pixel_mask", data=metadata.pixel_mask.astype(np.uint32))
            specific["pixel_mask"] = detector["pixel_mask"]  # a hard link, as Jungfraujoch
        sample = entry.create_group("sample")
        sample.attrs["NX_class"] = "NXsample"
        sample.create_dataset("name", data=metadata.sample_name)
    return path


def notification(filename: str, nimages: int, file_number: int, frame_shape: tuple[int, int],
                 metadata: NxmxMetadata, dtype: Any = np.uint16) -> dict[str, Any]:
    """The JSON map Jungfraujoch's writer publishes for a finalized data file.

    Args:
        filename: the data file, relative to the writer's folder.
        nimages: images in the file.
        file_number: number of the file in the acquisition, from 0.
        frame_shape: ``(ss, fs)`` of an image.
        metadata: the acquisition's metadata.
        dtype: the images' dtype (for ``saturation`` and ``underload``).
    """
    info = np.iinfo(np.dtype(dtype)) if np.dtype(dtype).kind in "iu" else None
    beam_x, beam_y = metadata.beam_center_px or ((frame_shape[1] - 1) / 2, (frame_shape[0] - 1) / 2)
    return {
        "filename": filename,
        "nimages": int(nimages),
        "file_number": int(file_number),
        "sample_name": metadata.sample_name,
        "run_name": metadata.run_name,
        "run_number": metadata.run_number,
        "user_data": {},
        "beam_x_pxl": float(beam_x),
        "beam_y_pxl": float(beam_y),
        "detector_distance_m": metadata.detector_distance_m,
        "detector_height_pxl": int(frame_shape[0]),
        "detector_width_pxl": int(frame_shape[1]),
        "image_time_s": metadata.frame_time_s,
        "incident_energy_eV": metadata.incident_energy_eV,
        "pixel_size_m": metadata.pixel_size_m,
        "saturation": int(info.max - 1) if info is not None else 0,
        "underload": int(info.min) if info is not None and info.min < 0 else -1,
    }


class FileNotificationPublisher:
    """Jungfraujoch's finalized-file notifications: one JSON message per file on a PUB socket.

    Args:
        url: the ZeroMQ URL to bind, e.g. ``tcp://127.0.0.1:5600`` or ``tcp://*:5600``.

    Raises:
        zmq.ZMQError: when the URL cannot be bound.
    """

    def __init__(self, url: str) -> None:
        self._socket = zmq.Context.instance().socket(zmq.XPUB)
        self._socket.setsockopt(zmq.LINGER, 2000)
        self._socket.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscription, not only the first
        self._socket.bind(url)
        self.url = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.subscribers = 0

    def wait_for_subscribers(self, count: int, timeout: float) -> bool:
        """Waits up to ``timeout`` s until ``count`` subscriptions arrived; returns whether
        they did."""
        deadline = time.monotonic() + timeout
        while self.subscribers < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._socket.poll(int(remaining * 1000) + 1):
                return self.subscribers >= count
            message = self._socket.recv()
            if message[:1] == b"\x01":
                self.subscribers += 1
            elif message[:1] == b"\x00":
                self.subscribers -= 1
        return True

    def publish(self, message: dict[str, Any]) -> None:
        """Sends one notification (a JSON map, single-part message)."""
        self.send_raw(json.dumps(message).encode())

    def send_raw(self, payload: bytes) -> None:
        """Sends raw bytes as a message (e.g. to test a receiver with a malformed one)."""
        self._socket.send(payload)

    def close(self) -> None:
        """Closes the socket (waiting up to 2 s for queued messages)."""
        self._socket.close()


@dataclasses.dataclass
class NxmxFiles:
    """The files of one acquisition: the master and the data files, in order."""

    master: pathlib.Path
    data_files: list[pathlib.Path]


def write_nxmx(directory: str | os.PathLike, prefix: str, images: np.ndarray, *,
               images_per_file: int = 100, layout: str = "links", compression: str | None = None,
               metadata: NxmxMetadata | None = None,
               on_data_file: Callable[[pathlib.Path, int, int], None] | None = None) -> NxmxFiles:
    """Writes an acquisition: data files of ``images_per_file`` images, then the master file.

    Args:
        directory: the writer's folder; files are ``directory/prefix_master.h5`` and
            ``directory/prefix_data_NNNNNN.h5`` (``prefix`` may hold sub-folders).
        prefix: the file name prefix.
        images: (n, ss, fs) images.
        images_per_file: images per data file.
        layout: ``"links"`` or ``"vds"`` (see :func:`write_master_file`).
        compression: ``None``/``"none"`` or ``"bslz4"``.
        metadata: the acquisition's metadata (defaults of :class:`NxmxMetadata`).
        on_data_file: called as ``on_data_file(path, nimages, file_number)`` after each data
            file is complete (e.g. to publish its notification).

    Returns:
        The files written.
    """
    metadata = metadata or NxmxMetadata()
    directory = pathlib.Path(directory)
    master = directory / f"{prefix}_master.h5"
    master.parent.mkdir(parents=True, exist_ok=True)
    written: list[pathlib.Path] = []
    entries: list[tuple[str, int]] = []
    for file_number, first in enumerate(range(0, len(images), images_per_file)):
        block = images[first:first + images_per_file]
        path = master.parent / f"{pathlib.Path(prefix).name}_data_{file_number + 1:06d}.h5"
        write_data_file(path, block, first + 1, compression)
        written.append(path)
        entries.append((path.name, len(block)))
        if on_data_file is not None:
            on_data_file(path, len(block), file_number)
    write_master_file(master, entries, images.shape[1:], images.dtype, metadata, layout)
    return NxmxFiles(master=master, data_files=written)


def _parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="om_simulator.py files",
        description="Writes NXmx master and data files of synthetic images with Gaussian Bragg "
        "spots, as Jungfraujoch's writer, and optionally publishes its finalized-file "
        "notifications.")
    parser.add_argument("directory", help="the writer's folder (notified names are relative to it)")
    parser.add_argument("prefix", help="file name prefix (may hold sub-folders)")
    parser.add_argument("--images", type=int, default=10, help="number of images (default 10)")
    parser.add_argument("--images-per-file", type=int, default=5,
                        help="images per data file (default 5)")
    parser.add_argument("--shape", type=int, nargs=2, default=(512, 512), metavar=("SS", "FS"),
                        help="image shape (default 512 512)")
    parser.add_argument("--spots", type=int, default=20, help="spots per image (default 20)")
    parser.add_argument("--dtype", default="uint16", choices=("uint16", "uint32", "int16", "int32"),
                        help="stored dtype (default uint16)")
    parser.add_argument("--defective-pixels", type=int, default=0,
                        help="all-ones (defective) pixels per image (default 0)")
    parser.add_argument("--layout", default="links", choices=("links", "vds"),
                        help="master file layout (default links)")
    parser.add_argument("--compression", default="none", choices=("none", "bslz4"))
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--wavelength", type=float, default=1.0, help="wavelength, Å (default 1)")
    parser.add_argument("--distance", type=float, default=0.1,
                        help="detector distance, m (default 0.1)")
    parser.add_argument("--notify", metavar="URL",
                        help="bind this PUB URL and announce each finalized data file")
    parser.add_argument("--wait-subscribers", type=int, default=0, metavar="K",
                        help="with --notify: wait for K subscribers before writing (default 0)")
    parser.add_argument("--subscriber-timeout", type=float, default=60.0, metavar="S",
                        help="give up waiting for subscribers after S s (default 60)")
    parser.add_argument("--bad-notifications", action="store_true",
                        help="with --notify: first send a message that is not JSON and a "
                        "notification naming a missing file (to test receivers)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (1 when the subscribers did not come)."""
    arguments = _parse_arguments(argv)
    images, _ = gaussian_spot_images(arguments.images, tuple(arguments.shape),
                                     n_spots=arguments.spots, seed=arguments.seed,
                                     dtype=arguments.dtype,
                                     defective_pixels=arguments.defective_pixels)
    metadata = NxmxMetadata(wavelength_A=arguments.wavelength,
                            detector_distance_m=arguments.distance)
    directory = pathlib.Path(arguments.directory)
    publisher = None
    on_data_file: Callable[[pathlib.Path, int, int], None] | None = None
    if arguments.notify:
        publisher = FileNotificationPublisher(arguments.notify)
        if not publisher.wait_for_subscribers(arguments.wait_subscribers,
                                              arguments.subscriber_timeout):
            print(f"nxmx_writer: error: {publisher.subscribers} of {arguments.wait_subscribers} "
                  f"subscribers after {arguments.subscriber_timeout} s", file=sys.stderr)
            publisher.close()
            return 1
        if arguments.bad_notifications:
            publisher.send_raw(b"\xff this is not JSON")
            publisher.publish(notification(f"{arguments.prefix}_data_999999.h5", 1, 999999,
                                           tuple(arguments.shape), metadata, arguments.dtype))

        def announce(path: pathlib.Path, nimages: int, file_number: int) -> None:
            relative = os.path.relpath(path, directory)
            publisher.publish(notification(relative, nimages, file_number,
                                           tuple(arguments.shape), metadata, arguments.dtype))
            print(f"nxmx_writer: notified {relative} ({nimages} images)", flush=True)

        on_data_file = announce

    try:
        files = write_nxmx(directory, arguments.prefix, images,
                           images_per_file=arguments.images_per_file, layout=arguments.layout,
                           compression=arguments.compression, metadata=metadata,
                           on_data_file=on_data_file)
    finally:
        if publisher is not None:
            publisher.close()
    print(f"nxmx_writer: wrote {files.master} and {len(files.data_files)} data files", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
