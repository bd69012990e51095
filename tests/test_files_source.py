# SPDX-License-Identifier: GPL-3.0-or-later
"""HDF5 files as events (``Hdf5FilesDataRetrieval``): NXmx master and data files written by
``om.simulation.nxmx_writer`` (``om_simulator.py files``), the real JUNGFRAU module file, bad
input, and the whole monitor (``mpiexec -n 3 om_monitor.py``) on listed files and on files
announced like Jungfraujoch's writer does (follow mode). Files are real files in ``tmp_path``.
"""

import json
import os
import pathlib
import re
import subprocess
import sys
import threading
import time

import h5py
import numpy as np
import pytest
import zmq
from helpers import (
    Process,
    assert_source_documented,
    configure_single_panel,
    free_port,
    mapped_regions,
    monitor_command,
    problem_kinds,
    simulator_mode_command,
    skip_unless_leases_are_taken,
    subscriber,
)

from om.data_retrieval_layer.data_retrieval_files import Hdf5FilesDataRetrieval
from om.data_retrieval_layer.jungfrau_calibration import JungfrauCalibration
from om.data_retrieval_layer.nxmx_files import HC_EV_ANGSTROM
from om.lib.exceptions import OmConfigurationError, OmDataExtractionError
from om.lib.geometry import load_geometry, slab_to_assembled
from om.lib.parameters import MonitorParameters
from om.lib.problems import problems
from om.lib.serialization import pack, unpack
from om.parallelization_layer.mpi_single_copy import large_sends_need_the_sender
from om.simulation import nxmx_writer
from om.simulation.nxmx_writer import NxmxMetadata, gaussian_spot_images, write_nxmx

SHAPE = (512, 512)
N_SPOTS = 15



def _configuration(tmp_path, data_retrieval=None, crystallography=None):
    return configure_single_panel(
        tmp_path, "Hdf5FilesDataRetrieval",
        {"fallback_beam_energy_in_eV": 9000.0, "fallback_detector_distance_in_mm": 250.0,
         **(data_retrieval or {})},
        {"data_broadcast_interval": 1, "speed_report_interval": 100, **(crystallography or {})},
        data_path="/entry/data/data")


def _handlers(config, source, ranks=3):
    """The handlers of the collecting rank and of each processing rank, initialized as
    MpiParallelization does (the collecting rank's information through msgpack)."""
    parameters = MonitorParameters(config)
    parameters.validate(Hdf5FilesDataRetrieval.parameter_groups, complete=False)
    collecting = Hdf5FilesDataRetrieval(parameters=parameters, source=source)
    info = unpack(pack(collecting.get_data_event_handler()
                       .initialize_event_handling_on_collecting_node(node_rank=0,
                                                                     node_pool_size=ranks)))
    handlers = []
    for rank in range(1, ranks):
        handler = Hdf5FilesDataRetrieval(parameters=parameters,
                                         source=source).get_data_event_handler()
        handler.initialize_event_handling_on_processing_node(
            node_rank=rank, node_pool_size=ranks, collecting_node_info=info)
        handlers.append(handler)
    return handlers


def _run(handler, rank, ranks=3):
    """Every event of one processing rank, extracted as the parallelization layer does."""
    data = []
    for event in handler.event_generator(node_rank=rank, node_pool_size=ranks):
        handler.open_event(event=event)
        try:
            data.append(handler.extract_data(event=event))
        finally:
            handler.close_event(event=event)
    return data


def _problem_counts():
    return dict(problems.counts())


def _new_problems(before):
    after = problems.counts()
    return {kind: after[kind] - before.get(kind, 0) for kind in after
            if after[kind] != before.get(kind, 0)}


# The writer -------------------------------------------------------------------------------


def test_writer_follows_the_published_layout(tmp_path):
    images, spots = gaussian_spot_images(5, (64, 96), n_spots=3, seed=2, min_radius=10,
                                         max_radius=25)
    mask = np.zeros((64, 96), dtype=np.uint32)
    mask[3, 4] = 1
    files = write_nxmx(tmp_path, "scan/run", images, images_per_file=2,
                       metadata=NxmxMetadata(wavelength_A=1.5, detector_distance_m=0.2,
                                             pixel_mask=mask))
    assert files.master == tmp_path / "scan" / "run_master.h5"
    assert [path.name for path in files.data_files] == [
        "run_data_000001.h5", "run_data_000002.h5", "run_data_000003.h5"]
    assert not list((tmp_path / "scan").glob("*.tmp"))
    with h5py.File(files.master, "r") as master:
        assert master["/entry/definition"][()] == b"NXmx"
        link = master["/entry/data"].get("data_000002", getlink=True)
        assert isinstance(link, h5py.ExternalLink)
        assert (link.filename, link.path) == ("run_data_000002.h5", "/entry/data/data")
        wavelength = master["/entry/instrument/beam/incident_wavelength"]
        assert wavelength[()] == 1.5 and wavelength.attrs["units"] == "angstrom"
        assert master["/entry/instrument/detector/detector_distance"][()] == 0.2
        np.testing.assert_array_equal(
            master["/entry/instrument/detector/detectorSpecific/pixel_mask"][()], mask)
    with h5py.File(files.data_files[1], "r") as data:
        dataset = data["/entry/data/data"]
        np.testing.assert_array_equal(dataset[()], images[2:4])
        assert (dataset.attrs["image_nr_low"], dataset.attrs["image_nr_high"]) == (3, 4)
    assert all(len(positions) == 3 for positions in spots)
    message = nxmx_writer.notification("scan/run_data_000001.h5", 2, 0, (64, 96),
                                       NxmxMetadata(wavelength_A=1.0, detector_distance_m=0.155))
    for key in ("filename", "nimages", "file_number", "beam_x_pxl", "beam_y_pxl",
                "detector_distance_m", "incident_energy_eV", "pixel_size_m", "saturation",
                "underload", "detector_width_pxl", "detector_height_pxl", "user_data"):
        assert key in message
    assert message["incident_energy_eV"] == pytest.approx(12398.42, abs=0.01)
    json.dumps(message)


def test_writer_command_line(tmp_path):
    assert nxmx_writer.main([str(tmp_path), "cli", "--images", "3", "--images-per-file", "2",
                             "--shape", "32", "48", "--spots", "2", "--layout", "vds",
                             "--compression", "bslz4", "--dtype", "int32"]) == 0
    with h5py.File(tmp_path / "cli_master.h5", "r") as master:
        dataset = master["/entry/data/data"]
        assert dataset.is_virtual and dataset.shape == (3, 32, 48) and dataset.dtype == np.int32
    with h5py.File(tmp_path / "cli_data_000001.h5", "r") as data:
        filters = data["/entry/data/data"].id.get_create_plist()
        assert filters.get_nfilters() == 1 and filters.get_filter(0)[0] == 32008  # bitshuffle


# Decoding, in process ----------------------------------------------------------------------


@pytest.mark.parametrize("layout, compression, dtype", [
    ("links", "none", "uint16"),
    ("links", "bslz4", "uint32"),
    ("vds", "bslz4", "int32"),
    ("vds", "none", "float32"),
])
def test_decoded_images_equal_the_written_ones(tmp_path, layout, compression, dtype):
    if dtype == "float32":
        images, _ = gaussian_spot_images(7, (40, 60), n_spots=3, seed=5, min_radius=8,
                                         max_radius=18)
        images = images.astype(np.float32) + np.float32(0.25)
        images[2, 5, 6] = np.nan
    else:
        images, _ = gaussian_spot_images(7, (40, 60), n_spots=3, seed=5, dtype=dtype,
                                         min_radius=8, max_radius=18, defective_pixels=4)
    start = 1.7e9
    files = write_nxmx(tmp_path, "run", images, images_per_file=3, layout=layout,
                       compression=compression,
                       metadata=NxmxMetadata(wavelength_A=0.8, detector_distance_m=0.12,
                                             frame_time_s=0.5, start_time=start))
    config, _, _ = _configuration(tmp_path)
    handlers = _handlers(config, str(files.master))
    by_index = {}
    for rank, handler in enumerate(handlers, start=1):
        for data in _run(handler, rank):
            index = int(data["event_id"].rpartition("//")[2])
            assert index % 2 == rank - 1  # rank r of n takes images r, r + n, ...
            assert index not in by_index
            by_index[index] = data
    assert sorted(by_index) == list(range(7))  # every image once
    for index, data in by_index.items():
        frame = data["detector_data"]
        expected = images[index].astype(np.float32)
        if dtype != "float32":
            info = np.iinfo(dtype)
            expected[images[index] == (info.max if dtype.startswith("u") else info.min)] = np.nan
        assert frame.dtype == np.float32 and frame.shape == (40, 60)
        assert np.array_equal(np.isnan(frame), np.isnan(expected))
        valid = ~np.isnan(expected)
        assert np.array_equal(frame[valid].view(np.uint32), expected[valid].view(np.uint32))
        assert data["event_id"] == f"{files.master}//{index}"
        assert data["timestamp"].dtype == np.float64
        assert data["timestamp"] == pytest.approx(start + 0.5 * index, abs=1e-5)
        assert data["beam_energy"] == pytest.approx(HC_EV_ANGSTROM / 0.8)
        assert data["detector_distance"] == pytest.approx(120.0)
    if dtype != "float32":
        assert np.isnan(by_index[0]["detector_data"]).sum() == 4


def test_memory_mapped_float_images_with_the_pixel_mask_applied(tmp_path):
    """Mapped images are read-only: the pixel mask, applied in place, goes into a copy of a
    float32 image, and the file's pages are never written."""
    images, _ = gaussian_spot_images(4, (40, 60), n_spots=3, seed=6, min_radius=8,
                                     max_radius=18)
    images = images.astype(np.float32) + np.float32(0.5)
    mask = np.zeros((40, 60), dtype=np.uint32)
    mask[7, 9] = mask[30, 2] = 1
    files = write_nxmx(tmp_path, "run", images, images_per_file=2,
                       metadata=NxmxMetadata(wavelength_A=1.0, detector_distance_m=0.1,
                                             pixel_mask=mask))
    config, _, _ = _configuration(tmp_path, {"files_memory_map": True,
                                             "files_apply_pixel_mask": True})
    (handler,) = _handlers(config, str(files.master), ranks=2)
    data = _run(handler, 1, ranks=2)
    assert len(data) == 4
    for index, event in enumerate(data):
        frame = event["detector_data"]
        assert frame.flags.writeable
        assert np.isnan(frame[7, 9]) and np.isnan(frame[30, 2])
        assert np.array_equal(frame[mask == 0], images[index][mask == 0])
    with h5py.File(files.data_files[0], "r") as handle:  # the file is as written
        assert np.array_equal(handle["/entry/data/data"][()], images[:2])


def test_a_file_cut_short_while_its_images_are_mapped_ahead(tmp_path):
    """Another process truncates a data file while the processing rank has its next images
    memory-mapped (the default): the truncation waits until no image of the file is mapped any
    more, every event's image is the one written, and the images the cut took are counted as
    ``image_read_error``. Without the read lease, this process would die of SIGBUS."""
    images, _ = gaussian_spot_images(20, (40, 60), n_spots=3, seed=9, min_radius=8,
                                     max_radius=18)
    files = write_nxmx(tmp_path, "run", images, images_per_file=20)
    (data_file,) = files.data_files
    skip_unless_leases_are_taken(tmp_path)
    with h5py.File(data_file, "r") as handle:
        dataset = handle["/entry/data/data"]
        offset = (dataset.id.get_offset() if dataset.chunks is None else
                  dataset.id.get_chunk_info_by_coord((5, 0, 0)).byte_offset
                  - 5 * images[0].nbytes)
    cut = offset + 5 * images[0].nbytes + 100  # into image 5
    config, _, _ = _configuration(tmp_path, {"files_read_ahead": 3})
    (handler,) = _handlers(config, str(files.master), ranks=2)
    before = _problem_counts()
    events = handler.event_generator(node_rank=1, node_pool_size=2)
    first = next(events)
    assert not first["image"].flags.writeable  # mapped
    got = {int(first["event_id"].rpartition("//")[2]): first["image"].copy()}
    del first
    truncater = subprocess.Popen(
        [sys.executable, "-c", "import os, sys; os.truncate(sys.argv[1], int(sys.argv[2]))",
         str(data_file), str(cut)])
    try:
        deadline = time.monotonic() + 20
        while (f"BREAKER   WRITE {truncater.pid} " not in pathlib.Path("/proc/locks").read_text()
               and time.monotonic() < deadline):
            time.sleep(0.01)
        for event in events:
            got[int(event["event_id"].rpartition("//")[2])] = event["image"].copy()
            assert event["image"].flags.writeable  # a copy, since the break
            del event
            if os.stat(data_file).st_size != cut and mapped_regions(data_file) == 0:
                # The last mapped image gone, the truncation goes on; the images read from
                # now on see the cut.
                assert truncater.wait(timeout=20) == 0
                assert os.stat(data_file).st_size == cut
        assert truncater.wait(timeout=20) == 0
    finally:
        truncater.kill()
        truncater.wait()
    for index, image in got.items():
        assert np.array_equal(image, images[index])
    assert set(range(5)) <= set(got)  # before the cut
    errors = _new_problems(before).get("image_read_error", 0)
    assert errors >= 1 and len(got) + errors == 20


@pytest.mark.parametrize("compression", ["none", "bslz4"])
def test_reading_ahead_gives_the_events_of_reading_in_the_loop(tmp_path, compression):
    """Images read in the read-ahead thread (straight from the file when uncompressed, copied
    or memory-mapped, by h5py otherwise) are the images, ids and metadata read in the event
    loop, in the same order."""
    images, _ = gaussian_spot_images(9, (40, 60), n_spots=3, seed=8, min_radius=8,
                                     max_radius=18)
    files = write_nxmx(tmp_path, "run", images, images_per_file=4, compression=compression)
    by_setting = {}
    for name, settings in (("in_loop", {"files_read_ahead": 0}),
                           ("ahead", {"files_read_ahead": 3, "files_memory_map": False}),
                           ("mapped", {"files_read_ahead": 3, "files_memory_map": True})):
        (tmp_path / name).mkdir()
        config, _, _ = _configuration(tmp_path / name, settings)
        handlers = _handlers(config, str(files.master))
        events = handlers[0].event_generator(node_rank=1, node_pool_size=3)
        first = next(events)
        threads = {thread.name for thread in threading.enumerate()}
        assert ("om-read-ahead-rank-1" in threads) == (name != "in_loop")
        by_setting[name] = [first, *events]
        assert "om-read-ahead-rank-1" not in {t.name for t in threading.enumerate()}
    assert [e["event_id"].rpartition("//")[2] for e in by_setting["ahead"]] == [
        "0", "2", "4", "6", "8"]
    # Only uncompressed images can be mapped; mapped ones are read-only.
    assert all(e["image"].flags.writeable == (compression != "none")
               for e in by_setting["mapped"])
    for name in ("ahead", "mapped"):
        for other, in_loop in zip(by_setting[name], by_setting["in_loop"], strict=True):
            other, in_loop = dict(other), dict(in_loop)
            assert other.keys() == in_loop.keys()
            assert np.array_equal(other.pop("image"), in_loop.pop("image"))
            assert other == in_loop


def test_data_files_plain_files_and_single_event_retrieval(tmp_path):
    images, _ = gaussian_spot_images(4, (30, 50), n_spots=2, seed=1, min_radius=5,
                                     max_radius=12)
    files = write_nxmx(tmp_path, "run", images, images_per_file=2)
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as handle:
        handle["/my/images"] = images[:3]
    other = tmp_path / "no_metadata.h5"
    with h5py.File(other, "w") as handle:
        handle["/data/data"] = images[3]  # one 2-D image, CrystFEL's default path
    # A data file alone, as Jungfraujoch notifies it: no metadata, so the fallbacks and mtime.
    config, _, _ = _configuration(tmp_path)
    (handler,) = _handlers(config, f"{files.data_files[1]},{other}", ranks=2)
    data = _run(handler, 1, ranks=2)
    assert [d["event_id"] for d in data] == [f"{files.data_files[1]}//0",
                                             f"{files.data_files[1]}//1", f"{other}//0"]
    assert data[0]["beam_energy"] == 9000.0 and data[0]["detector_distance"] == 250.0
    assert data[0]["timestamp"] == pytest.approx(os.path.getmtime(files.data_files[1]))
    np.testing.assert_array_equal(data[1]["detector_data"], images[3].astype(np.float32))
    np.testing.assert_array_equal(data[2]["detector_data"], images[3].astype(np.float32))
    # A configured data set path, and retrieval of single events by id.
    config, _, _ = _configuration(tmp_path, {"files_data_hdf5_path": "/my/images"})
    parameters = MonitorParameters(config)
    parameters.validate(Hdf5FilesDataRetrieval.parameter_groups, complete=False)
    handler = Hdf5FilesDataRetrieval(parameters=parameters,
                                     source=str(plain)).get_data_event_handler()
    handler.initialize_event_data_retrieval()
    data = handler.retrieve_event_data(f"{plain}//2")
    np.testing.assert_array_equal(data["detector_data"], images[2].astype(np.float32))
    assert data["event_id"] == f"{plain}//2"
    with pytest.raises(OmDataExtractionError, match="no readable image 3"):
        handler.retrieve_event_data(f"{plain}//3")
    with pytest.raises(OmDataExtractionError, match="not '<file>//<image index>'"):
        handler.retrieve_event_data("plain.h5")
    with pytest.raises(OmDataExtractionError, match="no file"):
        handler.retrieve_event_data(f"{tmp_path}/gone.h5//0")


def test_source_errors_at_start_up(tmp_path):
    config, _, _ = _configuration(tmp_path)
    parameters = MonitorParameters(config)
    parameters.validate(Hdf5FilesDataRetrieval.parameter_groups, complete=False)
    with pytest.raises(OmConfigurationError, match="give HDF5 files"):
        Hdf5FilesDataRetrieval(parameters=parameters, source=" , ")
    with pytest.raises(OmConfigurationError, match="not a file and not a ZeroMQ"):
        Hdf5FilesDataRetrieval(parameters=parameters, source="http://writer:5600")
    handler = Hdf5FilesDataRetrieval(parameters=parameters,
                                     source=f"{tmp_path}/none_*.h5").get_data_event_handler()
    with pytest.raises(OmConfigurationError, match="no file found"):
        handler.initialize_event_handling_on_collecting_node(node_rank=0, node_pool_size=3)


def test_real_module_file_with_jungfrau_calibration(tmp_path, real_module_file, real_module,
                                                    real_calibration):
    darks, gains = real_calibration
    config, _, _ = _configuration(tmp_path, {
        "detector_calibration": True, "detector_dark_filenames": darks[:1],
        "detector_gain_filenames": gains[:1], "detector_double_pixels": "keep",
        "detector_photon_energy_kev": 12.4})
    (handler,) = _handlers(config, str(real_module_file), ranks=2)
    data = _run(handler, 1, ranks=2)
    assert len(data) == 20
    calibration = JungfrauCalibration.from_files(
        dark_filenames=darks[:1], gain_filenames=gains[:1], photon_energy_kev=12.4,
        double_pixels="keep")
    differences = []
    for index, event in enumerate(data):
        frame = event["detector_data"]
        assert frame.dtype == np.float32 and frame.shape == (512, 1024)
        expected, _ = calibration.calibrate(real_module["raw"][index])
        assert np.array_equal(frame, expected, equal_nan=True)
        reference = real_module["converted_reference"][index]
        valid = reference < 30000
        differences.append(np.abs(frame[valid] - reference[valid]))
        assert event["event_id"] == f"{real_module_file}//{index}"
    assert float(np.median(np.concatenate(differences))) < 0.01  # Jungfraujoch's conversion
    assert data[0]["beam_energy"] == 12400.0  # the file's photon_energy_eV attribute
    assert data[0]["detector_distance"] == 250.0  # fallback: the file has none


def test_calibration_needs_raw_words_of_the_calibrated_modules(tmp_path, real_calibration):
    darks, gains = real_calibration
    images, _ = gaussian_spot_images(1, (512, 512), n_spots=1, seed=0)
    files = write_nxmx(tmp_path, "run", images, images_per_file=1)
    config, _, _ = _configuration(tmp_path, {
        "detector_calibration": True, "detector_dark_filenames": darks,
        "detector_gain_filenames": gains})
    (handler,) = _handlers(config, str(files.master), ranks=2)
    (event,) = list(handler.event_generator(node_rank=1, node_pool_size=2))
    with pytest.raises(OmDataExtractionError, match=r"needs raw words uint16 \(1024, 1024\)"):
        handler.extract_data(event=event)
    config, _, _ = _configuration(tmp_path, {"detector_calibration": True})
    with pytest.raises(OmConfigurationError, match="detector_dark_filenames: calibration needs"):
        _handlers(config, str(files.master), ranks=2)


# Bad input, in process ---------------------------------------------------------------------


def test_bad_files_are_counted_and_the_good_images_processed(tmp_path):
    images, _ = gaussian_spot_images(6, (32, 32), n_spots=2, seed=4, min_radius=5,
                                     max_radius=10)
    broken = write_nxmx(tmp_path, "broken", images, images_per_file=2)
    broken.data_files[1].unlink()  # a missing linked data file: images 2-3 are gone
    not_hdf5 = tmp_path / "notes.h5"
    not_hdf5.write_text("not an HDF5 file\n")
    no_images = tmp_path / "no_images.h5"
    wrong_dtype = tmp_path / "wrong_dtype.h5"
    wrong_shape = tmp_path / "wrong_shape.h5"
    with h5py.File(no_images, "w") as handle:
        handle["/entry/other"] = np.zeros(3)
    with h5py.File(wrong_dtype, "w") as handle:
        handle["/data/data"] = np.array([b"text"] * 4).reshape(2, 2)
    with h5py.File(wrong_shape, "w") as handle:
        handle["/data/data"] = np.zeros((2, 16, 16), dtype=np.uint16)  # not 32x32
    good = write_nxmx(tmp_path, "good", images[:3], images_per_file=3)
    source = ",".join(str(p) for p in (broken.master, not_hdf5, no_images, wrong_dtype,
                                       wrong_shape, tmp_path / "absent.h5",
                                       tmp_path / "absent_*.h5", good.master))
    config, _, _ = _configuration(tmp_path)
    before = _problem_counts()
    handlers = _handlers(config, source, ranks=2)
    assert _new_problems(before) == {"missing_data_file": 1, "not_hdf5_file": 1,
                                     "missing_dataset": 1, "wrong_image_dtype": 1,
                                     "wrong_image_shape": 1, "missing_file": 2}
    # An image that cannot be read any more: counted, and the next one read.
    good.data_files[0].unlink()
    before = _problem_counts()
    data = _run(handlers[0], 1, ranks=2)
    assert [d["event_id"].rpartition("/")[2] for d in data] == ["0", "1", "4", "5"]
    assert data[0]["event_id"].startswith(str(broken.master))
    assert _new_problems(before) == {"image_read_error": 3}


# The whole monitor (mpiexec) ----------------------------------------------------------------


def _collect(url_or_sockets, monitor, until, timeout):
    """Reads omdata and omframedata until ``until(last omdata)`` or, when the monitor ended,
    until its sockets are drained (bounded by ``timeout``)."""
    omdata, omframedata = url_or_sockets
    messages = {"omdata": [], "omframedata": []}
    poller = zmq.Poller()
    poller.register(omdata, zmq.POLLIN)
    poller.register(omframedata, zmq.POLLIN)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready = dict(poller.poll(200))
        for sock in ready:
            tag, payload = sock.recv_multipart()
            messages[tag.decode()].append(unpack(payload))
        if messages["omdata"] and until(messages["omdata"][-1]):
            break
        if not ready and monitor.popen.poll() is not None:
            break
    return messages


def _expected_peaks(geometry, spots):
    col, row = slab_to_assembled(spots[:, 0], spots[:, 1], load_geometry(geometry))
    return np.stack([col, row], axis=1)


def _check_frames(frames, spots_by_id, geometry):
    assert frames, "no omframedata received"
    for frame in frames:
        expected = _expected_peaks(geometry, spots_by_id[frame["event_id"]])
        found = np.stack([frame["peak_list_x_in_frame"], frame["peak_list_y_in_frame"]], axis=1)
        distances = np.linalg.norm(expected[:, None, :] - found[None, :, :], axis=2)
        assert np.all(distances.min(axis=1) <= 1.0), frame["event_id"]  # every spot found
        # Little else: a pair of Poisson background pixels (6 photons) can pass now and then.
        assert len(expected) <= frame["num_peaks"] <= len(expected) + 1


@pytest.mark.slow
@pytest.mark.parametrize("cma", ["as_found", "off"])
def test_monitor_reads_nxmx_files_and_exits_at_their_end(tmp_path, cma):
    """Also with MPICH's single-copy transfers (CMA) off, as on Ubuntu (Yama) or in Docker: the
    processing ranks then drive their frames' sends, and every frame still comes through."""
    environment = {"MPIR_CVAR_CH4_CMA_ENABLE": "0"} if cma == "off" else {}
    writer = subprocess.run(simulator_mode_command(
        "files", str(tmp_path / "data"), "lyso", "--images", "10", "--images-per-file", "5",
        "--spots", str(N_SPOTS), "--compression", "bslz4", "--seed", "7"),
        check=False, capture_output=True, text=True, timeout=120)
    assert writer.returncode == 0, writer.stderr
    _, spots = gaussian_spot_images(10, SHAPE, n_spots=N_SPOTS, seed=7)
    master = tmp_path / "data" / "lyso_master.h5"
    config, broadcast, geometry = _configuration(tmp_path)
    with subscriber(broadcast, b"omdata") as omdata, \
            subscriber(broadcast, b"omframedata") as omframedata:
        monitor = Process(monitor_command(str(master), config), tmp_path, "monitor",
                          env=environment)
        try:
            messages = _collect((omdata, omframedata), monitor,
                                lambda m: m["num_events"] >= 10, 240)
            code = monitor.wait(60)  # it ends by itself at the end of the files
        finally:
            monitor.stop()
    print(monitor.stdout, monitor.stderr[-3000:])
    assert code == 0
    data = messages["omdata"][-1]
    assert data["num_events"] == 10 and data["num_hits"] == 10
    assert data["num_events_per_rank"] == {"1": 5, "2": 5}
    assert data["beam_energy"] == pytest.approx(HC_EV_ANGSTROM)  # 1 Å in the master file
    assert data["detector_distance"] == pytest.approx(100.0)
    assert not data["problems"]
    powder = data["virtual_powder_plot"]
    assert np.count_nonzero(powder) >= N_SPOTS
    _check_frames(messages["omframedata"],
                  {f"{master}//{i}": positions for i, positions in enumerate(spots)}, geometry)
    assert re.search(r"final summary: 10 events, 10 hits", monitor.stdout)
    # The monitor runs on the mpich wheel (MPI is not started in this process).
    driven = large_sends_need_the_sender("MPICH", dict(os.environ, **environment))
    assert driven == (cma == "off" or driven)  # off: always driven; as found: this host's rule
    assert ("MPICH cannot copy frames straight between ranks" in monitor.stderr) == driven


@pytest.mark.slow
def test_monitor_counts_bad_files_and_processes_the_good_ones(tmp_path):
    images, _ = gaussian_spot_images(6, SHAPE, n_spots=N_SPOTS, seed=3)
    broken = write_nxmx(tmp_path, "broken", images, images_per_file=3)
    broken.data_files[0].unlink()  # missing linked data file: images 0-2 are gone
    not_hdf5 = tmp_path / "junk.h5"
    not_hdf5.write_bytes(b"\x89HDF but not really" * 10)
    good = write_nxmx(tmp_path, "good", images[:4], images_per_file=2)
    config, broadcast, _ = _configuration(tmp_path)
    source = f"{broken.master},{not_hdf5},{good.master}"
    with subscriber(broadcast, b"omdata") as omdata, \
            subscriber(broadcast, b"omframedata") as omframedata:
        monitor = Process(monitor_command(source, config), tmp_path, "monitor")
        try:
            messages = _collect((omdata, omframedata), monitor,
                                lambda m: m["num_events"] >= 7, 240)
            code = monitor.wait(60)
        finally:
            monitor.stop()
    print(monitor.stdout, monitor.stderr[-3000:])
    assert code == 0
    data = messages["omdata"][-1]
    assert data["num_events"] == 7  # 3 of the broken acquisition + 4 good ones
    assert data["problems"] == {"missing_data_file": 1, "not_hdf5_file": 1}
    for kind in ("missing_data_file", "not_hdf5_file"):
        lines = [line for line in monitor.stderr.splitlines() if f"{kind}:" in line]
        assert len(lines) == 1, (kind, lines)  # one line per bad file
    assert "broken_data_000001.h5, which does not exist" in monitor.stderr
    assert "final summary: 7 events" in monitor.stdout


@pytest.mark.slow
def test_monitor_follows_files_announced_like_jungfraujoch(tmp_path):
    writer_dir = tmp_path / "writer"
    writer_dir.mkdir()
    notify = f"tcp://127.0.0.1:{free_port()}"
    config, broadcast, geometry = _configuration(
        tmp_path, {"files_follow_directory": str(writer_dir)})
    with subscriber(broadcast, b"omdata") as omdata, \
            subscriber(broadcast, b"omframedata") as omframedata:
        monitor = Process(monitor_command(notify, config), tmp_path, "monitor")
        try:
            # The writer waits (bounded) for both processing ranks to subscribe, sends a
            # message that is not JSON and a notification of a missing file, then writes 2
            # data files of 3 images, announcing each when complete.
            writer = subprocess.run(simulator_mode_command(
                "files", str(writer_dir), "run", "--images", "6", "--images-per-file", "3",
                "--spots", str(N_SPOTS), "--seed", "11", "--notify", notify,
                "--wait-subscribers", "2", "--subscriber-timeout", "180", "--bad-notifications"),
                check=False, capture_output=True, text=True, timeout=240)
            print(writer.stdout, writer.stderr)
            assert writer.returncode == 0
            messages = _collect((omdata, omframedata), monitor,
                                lambda m: m["num_events"] >= 6, 120)
            assert monitor.popen.poll() is None  # follow mode: running until stopped
        finally:
            code = monitor.stop()
    print(monitor.stdout, monitor.stderr[-3000:])
    assert code == 0
    data = messages["omdata"][-1]
    assert data["num_events"] == 6 and data["num_hits"] == 6
    assert data["problems"] == {"bad_notification": 1, "missing_file": 1}
    assert data["beam_energy"] == pytest.approx(HC_EV_ANGSTROM)  # from the notification
    assert data["detector_distance"] == pytest.approx(100.0)
    _, spots = gaussian_spot_images(6, SHAPE, n_spots=N_SPOTS, seed=11)
    spots_by_id = {}
    for number in (1, 2):
        data_file = writer_dir / f"run_data_{number:06d}.h5"
        for index in range(3):
            spots_by_id[f"{data_file}//{index}"] = spots[(number - 1) * 3 + index]
    _check_frames(messages["omframedata"], spots_by_id, geometry)
    assert "final summary: 6 events" in monitor.stdout


# Documentation -------------------------------------------------------------------------------


def test_keys_and_problem_kinds_are_documented():
    from om.data_retrieval_layer import data_event_handler_files, nxmx_files

    kinds = problem_kinds(nxmx_files, data_event_handler_files)
    assert {"missing_file", "bad_notification", "image_read_error"} <= kinds
    assert_source_documented("source_files.md", Hdf5FilesDataRetrieval, kinds)
