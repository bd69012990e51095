# SPDX-License-Identifier: GPL-3.0-or-later
"""MAX IV streaming-receiver secondary port: decoding, header values, msg_number gaps, bad
input, Data Sources, and the whole monitor fed by ``om_simulator.py streaming-receiver`` over
real sockets on 127.0.0.1.

The messages are made by :mod:`om.simulation.streaming_receiver_sender` or by json/struct
here, written from the published format, never with om's decoder.
"""

import json
import struct

import numpy as np
import pytest
from helpers import (
    FALLBACK_EV,
    FALLBACK_MM,
    Process,
    assert_damaged_messages_are_dropped,
    assert_one_zeromq_url_source,
    assert_source_documented,
    configure_stream,
    counts_during,
    extract_messages,
    free_port,
    monitor_command,
    monitor_parameters,
    problem_kinds,
    receive_sent_events,
    reported_lines,
    run_monitor_on_sent,
    run_monitor_on_simulator,
    run_sender_main,
)

from om.data_retrieval_layer import (
    data_event_handler_streaming_receiver as handler_module,
)
from om.data_retrieval_layer.data_event_handler_streaming_receiver import (
    MAX_IMAGE_PIXELS,
    PROBLEM_KINDS,
    StreamingReceiverMessages,
)
from om.data_retrieval_layer.data_retrieval_streaming_receiver import (
    StreamingReceiverDataRetrieval,
)
from om.lib.parameters import MonitorParameters
from om.simulation import streaming_receiver_sender as sender_module
from om.simulation.streaming_receiver_sender import (
    MASKED_BLOCK,
    StreamingReceiverSender,
    bslz4_blob,
    detector_metadata,
    header_message,
    image_message,
    series_end_message,
    spot_count,
    synthetic_image,
)

SHAPE = (512, 512)
FILENAME = "/data/visitors/biomax/2024/raw/lysozyme_000001.h5"


def _configuration(tmp_path, data_retrieval=None, **crystallography):
    """A monitor.yaml for StreamingReceiverDataRetrieval; returns (path, broadcast URL)."""
    return configure_stream(tmp_path, "StreamingReceiverDataRetrieval", data_retrieval,
                            **crystallography)


def _parameters(tmp_path, **data_retrieval) -> MonitorParameters:
    return monitor_parameters(_configuration(tmp_path, data_retrieval)[0],
                              StreamingReceiverDataRetrieval)


def _extract(tmp_path, messages, **data_retrieval):
    """Runs messages through one rank's message handling (one processing rank) and the Data
    Sources; returns the data of each image, with the decoded image under ``image``."""
    retrieval = StreamingReceiverDataRetrieval(parameters=_parameters(tmp_path, **data_retrieval),
                                               source="tcp://127.0.0.1:1")
    return extract_messages(retrieval.get_data_event_handler(), messages)


# Decoding ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("compression", ["bslz4", "none"])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32", "uint64", "int16", "int32",
                                   "float32", "float64"])
def test_images_decode_bit_for_bit(compression, dtype):
    values = np.random.default_rng(3).integers(0, 250, SHAPE)
    image = values.astype(dtype)
    event = StreamingReceiverMessages().handle(image_message(5, 4, image, compression), 0.0)
    assert event["image"].dtype == np.dtype(dtype) and event["image"].shape == SHAPE
    assert event["image"].tobytes() == image.tobytes()
    assert (event["frame"], event["msg_number"]) == (4, 5)


@pytest.mark.parametrize("compression", ["bslz4", "none"])
def test_multi_threshold_images_give_the_first_threshold(compression):
    image, _ = synthetic_image(0, SHAPE, thresholds=3)
    parts = image_message(1, 0, image, compression)
    assert len(parts) == 4
    event = StreamingReceiverMessages().handle(parts, 0.0)
    assert event["image"].shape == SHAPE and event["image"].tobytes() == image[0].tobytes()


@pytest.mark.parametrize("name", ["uint32", "u4", "<u4", "|u4", "=u4"])
def test_element_type_names_and_codes(name):
    image = np.arange(SHAPE[0] * SHAPE[1], dtype="<u4").reshape(SHAPE)
    parts = image_message(1, 0, image, "none")
    header = json.loads(parts[0]) | {"type": name}
    event = StreamingReceiverMessages().handle([json.dumps(header).encode(), parts[1]], 0.0)
    np.testing.assert_array_equal(event["image"], image)


def test_big_endian_types_are_honoured():
    image = np.arange(SHAPE[0] * SHAPE[1], dtype=">u2").reshape(SHAPE)
    header = {"htype": "image", "msg_number": 1, "frame": 0, "shape": list(SHAPE), "type": ">u2",
              "compression": "none"}
    event = StreamingReceiverMessages().handle([json.dumps(header).encode(), image.tobytes()], 0.0)
    np.testing.assert_array_equal(event["image"], image)


# Header values, series, Data Sources ----------------------------------------------------------

def test_header_values_reach_the_images_of_its_series(tmp_path):
    image, _ = synthetic_image(0, SHAPE)
    messages = [
        image_message(7, 6, image),  # start-up in the middle of a series: no header here
        header_message(0, FILENAME, detector_metadata(photon_energy=8000.0,
                                                      detector_distance=0.12)),
        image_message(1, 0, image),
        image_message(3, 2, image, timestamp=1.7e9 + 0.25),
        series_end_message(4),
        image_message(2, 1, image),  # a later series whose header went to another rank
        image_message(4, 3, image),
        image_message(1, 0, image),  # the count restarted: yet another series
    ]
    data, counts = counts_during(lambda: _extract(tmp_path, messages))
    # One processing rank: missing the first series' series_end, msg_number 2, the second
    # series' 0-1 and 3, the third series' header and the second's series_end.
    assert counts == {"image_without_header": 3, "msg_number_gap": 7}
    assert [d["event_id"] for d in data] == ["unknown:6", f"{FILENAME}:0", f"{FILENAME}:2",
                                             "unknown:1", "unknown:3", "unknown:0"]
    assert [d["beam_energy"] for d in data] == [FALLBACK_EV, 8000.0, 8000.0, FALLBACK_EV,
                                                FALLBACK_EV, FALLBACK_EV]
    assert [d["detector_distance"] for d in data] == [
        FALLBACK_MM, pytest.approx(120.0), pytest.approx(120.0), FALLBACK_MM, FALLBACK_MM,
        FALLBACK_MM]
    assert [d["timestamp"] for d in data] == [123.0, 123.0, 1.7e9 + 0.25, 123.0, 123.0, 123.0]
    assert all(isinstance(d["timestamp"], np.float64) for d in data)


def test_a_header_without_metadata_and_keys_of_nested_maps(tmp_path):
    image, _ = synthetic_image(0, SHAPE)
    nested = {"detector": {"config": {"energy_keV": 12.0, "distance": 150.0}}}
    messages = [header_message(0, FILENAME), image_message(1, 0, image), series_end_message(2),
                header_message(0, FILENAME, nested), image_message(1, 0, image)]
    data, counts = counts_during(lambda: _extract(
        tmp_path, messages, header_beam_energy_key="detector/config/energy_eV",
        header_detector_distance_key="detector/config/distance",
        header_detector_distance_unit="mm"))
    assert counts == {}
    assert [d["beam_energy"] for d in data] == [FALLBACK_EV, FALLBACK_EV]
    assert [d["detector_distance"] for d in data] == [FALLBACK_MM, 150.0]
    assert [d["event_id"] for d in data] == [f"{FILENAME}:0", f"{FILENAME}:0"]


def test_bad_header_metadata_is_counted_and_the_fallbacks_used(tmp_path):
    image, _ = synthetic_image(0, SHAPE)
    header = header_message(0, FILENAME)
    cases = [
        [header[0], b"{not json"],
        [header[0], b"[1, 2]"],
        header_message(0, FILENAME, {"photon_energy": "12 keV", "detector_distance": -1}),
        header_message(0, FILENAME, {"photon_energy": 12.4}),  # keV: outside 100 eV - 1 MeV
        header_message(0, FILENAME, {"detector_distance": 150}),  # mm: 150 m is too far
        header_message(0, FILENAME, {"photon_energy": True, "detector_distance": [0.1]}),
        [json.dumps({"htype": "header", "msg_number": "0", "filename": 3}).encode()],
    ]
    for parts, expected in zip(cases, (1, 1, 2, 1, 1, 2, 2), strict=True):
        messages = [parts, image_message(1, 0, image)]
        data, counts = counts_during(lambda: _extract(tmp_path, messages))  # noqa: B023
        assert counts == {"bad_header_metadata": expected}
        assert data[0]["beam_energy"] == FALLBACK_EV
        assert data[0]["detector_distance"] == FALLBACK_MM


@pytest.mark.parametrize("dtype, masked_value", [
    ("uint16", 0xFFFF), ("uint32", 0xFFFFFFFF), ("int32", -1)])
def test_masked_pixels_are_nan(tmp_path, dtype, masked_value):
    image, _ = synthetic_image(2, SHAPE, dtype=dtype)
    (data,) = _extract(tmp_path, [image_message(1, 0, image, "none")])
    masked = image == masked_value
    assert masked.sum() == 16 and masked[MASKED_BLOCK].all()
    frame = data["detector_data"]
    assert frame.dtype == np.float32 and frame.shape == SHAPE
    assert np.isnan(frame).sum() == 16 and np.isnan(frame[masked]).all()
    np.testing.assert_array_equal(frame[~masked], image[~masked].astype(np.float32))


def test_negative_pixels_of_signed_images_and_infinities_are_nan(tmp_path):
    image = np.full(SHAPE, 5, dtype=np.int16)
    image[0, :3] = [-1, -2, -32768]
    floats = np.ones(SHAPE, dtype=np.float32)
    floats[1, 1], floats[2, 2] = np.inf, -np.inf
    data = _extract(tmp_path, [image_message(1, 0, image), image_message(2, 1, floats)])
    assert np.isnan(data[0]["detector_data"]).sum() == 3
    assert np.isnan(data[1]["detector_data"]).sum() == 2
    kept = _extract(tmp_path, [image_message(1, 0, image)], detector_mask_special_values=False)
    np.testing.assert_array_equal(kept[0]["detector_data"], image.astype(np.float32))


# msg_number gaps ----------------------------------------------------------------------------------

def _series(first_frame, frames):
    """A series' messages: header 0, images 1..frames, series_end (tiny images)."""
    image = np.zeros((8, 8), dtype=np.uint16)
    messages = [header_message(0, FILENAME)]
    messages += [image_message(i + 1, first_frame + i, image, "none") for i in range(frames)]
    return messages + [series_end_message(frames + 1)]


def _deal(messages, ranks, lost=(), phase=0):
    """Deals the messages not ``lost`` (by index) round-robin to ``ranks`` handlers, as a PUSH
    socket does, the first to rank ``phase``; returns the problems counted (the handler of
    index 0 reports gaps, as the first processing rank) and each rank's missing msg_numbers."""
    states = [StreamingReceiverMessages(processing_ranks=ranks, report_gaps=rank == 0)
              for rank in range(ranks)]
    kept = [message for index, message in enumerate(messages) if index not in lost]

    def run():
        for index, message in enumerate(kept):
            states[(index + phase) % ranks].handle(message, 0.0)

    _, counts = counts_during(run)
    return counts, [state.counts["missing_msg_numbers"] for state in states]


DEALINGS = [(ranks, phase) for ranks in (1, 2, 3) for phase in range(ranks)]


@pytest.mark.parametrize("ranks, phase", DEALINGS)
def test_no_gap_is_counted_when_nothing_is_lost(ranks, phase):
    messages = [*_series(0, 20), *_series(0, 7), *_series(0, 1), *_series(0, 30)]
    counts, missing = _deal(messages, ranks, phase=phase)
    assert counts.get("msg_number_gap", 0) == 0 and missing == [0] * ranks


# Three series of 20 images: messages 0-21, 22-43, 44-65 (header, images 1-20, series_end).
THREE_SERIES = [*_series(0, 20), *_series(20, 20), *_series(40, 20)]


@pytest.mark.parametrize("ranks, phase", DEALINGS)
@pytest.mark.parametrize("lost", [{5}, {5, 6, 7}, {3, 10, 11, 17}, {23}, {24, 25}, {30, 50}])
def test_lost_messages_inside_a_series_are_counted_once(ranks, phase, lost):
    counts, missing = _deal(THREE_SERIES, ranks, lost, phase)
    assert counts.get("msg_number_gap", 0) == len(lost)
    assert missing == [len(lost)] * ranks  # every rank sees every loss; only one reports


@pytest.mark.parametrize("ranks, phase", DEALINGS)
@pytest.mark.parametrize("lost", [{20}, {21}, {22}, {20, 21}, {21, 22}, {20, 22, 23}])
def test_lost_messages_at_a_series_boundary_give_a_lower_bound(ranks, phase, lost):
    # 20: the last image, 21: the series_end, 22: the next header. Never more than were lost;
    # with one processing rank, exact unless the series_end and images before it are lost.
    counts, _ = _deal(THREE_SERIES, ranks, lost, phase)
    found = counts.get("msg_number_gap", 0)
    assert found <= len(lost)
    if ranks == 1:
        assert found == (1 if lost == {20, 21} else len(lost))


@pytest.mark.parametrize("ranks, phase", DEALINGS)
def test_messages_whose_number_cannot_be_read_are_no_gaps(ranks, phase):
    messages = list(THREE_SERIES)
    for index in (4, 9, 10, 30, 31, 32):
        messages[index] = [b"\xff not JSON"]
    counts, _ = _deal(messages, ranks, {15, 50}, phase)
    assert counts["bad_json"] == 6 and counts.get("msg_number_gap", 0) == 2


def test_the_first_message_after_start_up_only_sets_the_reference():
    image = np.zeros((8, 8), dtype=np.uint16)
    state = StreamingReceiverMessages()
    _, counts = counts_during(lambda: [state.handle(image_message(n, n - 1, image, "none"), 0.0)
                                        for n in (500, 501, 504)])
    assert counts == {"image_without_header": 1, "msg_number_gap": 2}


# Bad input ----------------------------------------------------------------------------------------

def _image_parts(image, compression="none", **changes):
    parts = image_message(1, 0, image, compression)
    header = json.loads(parts[0])
    header.update(changes)
    return [json.dumps({k: v for k, v in header.items() if v is not None}).encode(), *parts[1:]]


def _bad_messages():
    """(name, message parts, expected problem kind), each followed in the test by good input."""
    image, _ = synthetic_image(0, SHAPE, dtype="uint32")
    blob = bslz4_blob(image)
    raw = image.tobytes()
    good = _image_parts(image)
    corrupt = bytearray(blob)
    corrupt[16:24] = b"\xff" * 8  # inside the first LZ4 block, the framing intact
    return [
        ("not JSON", [b"\xff not JSON", raw], "bad_json"),
        ("JSON not an object", [b"[1, 2, 3]", raw], "bad_json"),
        ("no htype", [b'{"msg_number": 1}', raw], "bad_json"),
        ("too long JSON", [b" " * (2 << 20) + b"{}"], "bad_json"),
        ("unknown htype", [b'{"htype": "status", "msg_number": 1}'], "unknown_htype"),
        ("no parts", [], "bad_message"),
        ("image without its blob", good[:1], "bad_message"),
        ("image with an extra part", [*good, raw], "bad_message"),
        ("3 thresholds, 2 blobs", _image_parts(image, shape=[3, 512, 512]) + [raw],
         "bad_message"),
        ("header of 3 parts", [*header_message(0, FILENAME, {}), b"{}"], "bad_message"),
        ("series_end of 2 parts", [*series_end_message(3), b"x"], "bad_message"),
        ("no shape", _image_parts(image, shape=None), "bad_image_header"),
        ("shape of floats", _image_parts(image, shape=[512.0, 512.0]), "bad_image_header"),
        ("1-D shape", _image_parts(image, shape=[512 * 512]), "bad_image_header"),
        ("no frame", _image_parts(image, frame=None), "bad_image_header"),
        ("negative frame", _image_parts(image, frame=-1), "bad_image_header"),
        ("msg_number text", _image_parts(image, msg_number="1"), "bad_image_header"),
        ("type not text", _image_parts(image, type=4), "bad_image_header"),
        ("compression not text", _image_parts(image, compression=None), "bad_image_header"),
        ("unknown dtype", _image_parts(image, type="complex64"), "unknown_dtype"),
        ("object dtype", _image_parts(image, type="object"), "unknown_dtype"),
        ("structured dtype", _image_parts(image, type="[('a', 'u4')]"), "unknown_dtype"),
        ("unknown compression", _image_parts(image, compression="lz4"), "unknown_compression"),
        ("raw bytes short", [good[0], raw[:-4]], "wrong_size"),
        ("declared type too wide", _image_parts(image, type="uint64"), "wrong_size"),
        ("declared shape too small", _image_parts(image, shape=[256, 512]), "wrong_size"),
        ("empty shape", _image_parts(image, shape=[0, 512]), "wrong_size"),
        ("huge shape", _image_parts(image, shape=[1 << 20, 1 << 20]), "wrong_size"),
        ("bslz4 header size", [_image_parts(image, "bslz4")[0],
                               struct.pack(">QI", 1000, 8192) + blob[12:]], "wrong_size"),
        ("bslz4 of another type", [_image_parts(image, "bslz4", type="uint16")[0], blob],
         "wrong_size"),
        ("truncated bslz4", [_image_parts(image, "bslz4")[0], blob[:-100]],
         "bad_compressed_data"),
        ("bslz4 without header", [_image_parts(image, "bslz4")[0], blob[:6]],
         "bad_compressed_data"),
        ("bslz4 block size", [_image_parts(image, "bslz4")[0],
                              blob[:8] + struct.pack(">I", 6) + blob[12:]],
         "bad_compressed_data"),
        ("corrupt LZ4 block", [_image_parts(image, "bslz4")[0], bytes(corrupt)],
         "bad_compressed_data"),
    ]


@pytest.mark.parametrize("name, parts, kind", _bad_messages(),
                         ids=[case[0] for case in _bad_messages()])
def test_bad_messages_are_counted_and_the_next_image_is_processed(name, parts, kind):
    state = StreamingReceiverMessages()
    event, counts = counts_during(lambda: state.handle(parts, 0.0))
    assert event is None and counts == {kind: 1}
    assert state.counts["dropped"] == 1
    image, _ = synthetic_image(1, SHAPE)
    event = state.handle(image_message(9, 1, image), 0.0)
    assert event["image"].tobytes() == image.tobytes()


def test_a_huge_declared_shape_allocates_nothing():
    assert (1 << 20) * (1 << 20) > MAX_IMAGE_PIXELS
    header = {"htype": "image", "msg_number": 1, "frame": 0, "shape": [1 << 14, 1 << 12],
              "type": "uint64", "compression": "bslz4"}
    blob = struct.pack(">QI", (1 << 26) * 8, 8192)  # a header that agrees, and nothing else
    _, counts = counts_during(lambda: StreamingReceiverMessages().handle(
        [json.dumps(header).encode(), blob], 0.0))
    assert counts == {"bad_compressed_data": 1}


def test_damaged_messages_never_raise():
    # Random damage to good messages (bytes changed, cut short): each is either an image or
    # counted and dropped; nothing raises, nothing crashes the process.
    image, _ = synthetic_image(0, (128, 128), dtype="uint32")
    messages = [image_message(1, 0, image, c) for c in ("bslz4", "none")]
    messages.append(header_message(0, FILENAME, detector_metadata()))

    def damage(message, trial, rng):
        parts = [bytearray(part) for part in message]
        part = parts[rng.integers(len(parts))]
        if trial % 3 == 0:
            del part[rng.integers(len(part)):]
        else:
            for _ in range(rng.integers(1, 6)):
                part[rng.integers(len(part))] = rng.integers(256)
        return [bytes(p) for p in parts]

    assert_damaged_messages_are_dropped(StreamingReceiverMessages(), messages, damage, 11,
                                        MAX_IMAGE_PIXELS)


def test_the_source_must_be_one_zeromq_url(tmp_path):
    assert_one_zeromq_url_source(StreamingReceiverDataRetrieval, _parameters(tmp_path),
                                 "tcp://receiver:9999", f"{FILENAME}:0",
                                 "cannot connect to the streaming-receiver")


# Real PUSH/PULL sockets, in process -------------------------------------------------------------

@pytest.mark.parametrize("compression", ["bslz4", "none"])
def test_handler_receives_the_sent_images_bit_for_bit(tmp_path, compression):
    sender = StreamingReceiverSender("tcp://127.0.0.1:0")
    retrieval = StreamingReceiverDataRetrieval(parameters=_parameters(tmp_path),
                                               source=sender.url)
    sent = [synthetic_image(i, SHAPE, dtype=dtype, thresholds=thresholds)[0]
            for i, (dtype, thresholds) in enumerate([
                ("uint32", 0), ("uint16", 0), ("int32", 0), ("float32", 0), ("uint32", 2),
                ("uint16", 3)])]

    def send():
        sender.send(header_message(0, FILENAME, detector_metadata(photon_energy=11000.0,
                                                                  detector_distance=0.2)))
        for index, image in enumerate(sent):
            sender.send(image_message(index + 1, index, image, compression))
        sender.send(series_end_message(len(sent) + 1))

    received = receive_sent_events(retrieval.get_data_event_handler(), sender, len(sent), send)
    assert len(received) == len(sent)
    for image, (decoded, data) in zip(sent, received):
        first = image if image.ndim == 2 else image[0]
        assert decoded.dtype == first.dtype and decoded.tobytes() == first.tobytes()
        frame = data["detector_data"]
        assert frame.dtype == np.float32 and frame.shape == SHAPE
        masked = np.zeros(SHAPE, dtype=bool)
        if first.dtype.kind in "ui":
            masked[MASKED_BLOCK] = True
        np.testing.assert_array_equal(frame[~masked], first[~masked].astype(np.float32))
        assert np.isnan(frame[masked]).all() and np.isnan(frame).sum() == masked.sum()
        assert data["beam_energy"] == 11000.0 and data["detector_distance"] == 200.0
    assert [d["event_id"] for _, d in received] == [f"{FILENAME}:{i}" for i in range(len(sent))]
    counts = retrieval.get_data_event_handler().counters()
    assert counts["headers"] == 1 and counts["images"] == len(sent) and counts["dropped"] == 0


def test_the_sender_runs_as_a_module():
    # main(argv) with a client pulling in this process: exit code 0, header/images/end sent.
    code, messages = run_sender_main(sender_module.main, [
        "--frames", "3", "--rate", "0", "--compression", "none", "--dtype", "uint16",
        "--shape", "128x256", "--thresholds", "2", "--wait-timeout", "30"], 5)
    assert code == 0
    headers = [json.loads(parts[0]) for parts in messages]
    assert [h["htype"] for h in headers] == ["header", "image", "image", "image", "series_end"]
    assert [h["msg_number"] for h in headers] == [0, 1, 2, 3, 4]
    assert json.loads(messages[0][1])["photon_energy"] == 12400.0
    assert headers[1]["shape"] == [2, 128, 256] and headers[1]["type"] == "uint16"
    assert [len(parts) for parts in messages[1:4]] == [3, 3, 3]
    assert len(messages[1][1]) == 128 * 256 * 2


# The whole monitor: mpiexec -n 3 om_monitor.py ----------------------------------------------------

@pytest.mark.slow
def test_monitor_end_to_end(tmp_path):
    frames = 16
    config, broadcast = _configuration(tmp_path)
    data, frames_seen, monitor = run_monitor_on_simulator(
        tmp_path, config, broadcast, "streaming-receiver", frames, "--rate", "20",
        "--compression", "bslz4", "--dtype", "uint32", "--filename", FILENAME,
        "--photon-energy", "12000", "--detector-distance", "0.15", "--wait-for-clients", "2",
        "--wait-timeout", "180")
    assert data["num_events"] == frames
    per_rank = data["num_events_per_rank"]
    assert set(per_rank) == {"1", "2"} and sum(per_rank.values()) == frames
    assert min(per_rank.values()) >= frames // 2 - 1  # ZeroMQ deals in turn
    expected = [spot_count(i) for i in range(frames)]
    assert data["num_hits"] == sum(count > 5 for count in expected)
    assert data["peakogram"].sum() == sum(expected)  # every spot found, once
    # One rank received the header; the other uses the fallbacks for the series. No gap.
    assert data["problems"] == {"image_without_header": 1}
    assert data["beam_energy"] in (12000.0, FALLBACK_EV)
    assert data["detector_distance"] in (pytest.approx(150.0), FALLBACK_MM)
    for frame in frames_seen:
        name, _, number = frame["event_id"].rpartition(":")
        assert name in (FILENAME, "unknown")
        assert frame["num_peaks"] == spot_count(int(number))
        assert frame["frame_data"].shape == SHAPE and np.isnan(frame["frame_data"]).sum() == 16
        _, spots = synthetic_image(int(number), SHAPE)
        rows = 511 - spots[:, 0]  # the panel's ss axis is +y, and +y is up in the frame
        assert sorted(frame["peak_list_x_in_frame"]) == pytest.approx(sorted(spots[:, 1]),
                                                                      abs=0.5)
        assert sorted(frame["peak_list_y_in_frame"]) == pytest.approx(sorted(rows), abs=0.5)
    assert f"final summary: {frames} events" in monitor.stdout


def _renumbered(parts, msg_number):
    """The message with ``msg_number`` in its JSON part, when it has a readable one."""
    try:
        header = json.loads(parts[0])
    except ValueError:
        return parts
    if not isinstance(header, dict) or not isinstance(header.get("msg_number"), int):
        return parts
    return [json.dumps(header | {"msg_number": msg_number}).encode(), *parts[1:]]


@pytest.mark.slow
def test_bad_input_end_to_end(tmp_path):
    config, broadcast = _configuration(tmp_path)
    sender = StreamingReceiverSender(f"tcp://127.0.0.1:{free_port()}")
    bad = [(parts, kind) for name, parts, kind in _bad_messages()
           if name in ("not JSON", "no htype", "unknown htype", "image without its blob",
                       "no shape", "unknown dtype", "unknown compression", "raw bytes short",
                       "bslz4 header size", "truncated bslz4")]
    expected = {}
    for _, kind in bad:
        expected[kind] = expected.get(kind, 0) + 1
    # A series as the receiver numbers it: header 0, the bad messages 1-10, the good images
    # from 11 on with 3 msg_numbers never sent (lost), then the series_end.
    good, lost = 10, 3
    expected["msg_number_gap"] = lost
    numbers = list(range(len(bad) + 1, len(bad) + good + lost + 1))
    del numbers[4:4 + lost]

    def send():
        sender.send(header_message(0, FILENAME, detector_metadata()))
        for number, (parts, _) in enumerate(bad, start=1):
            sender.send(_renumbered(parts, number))
        for frame, number in enumerate(numbers):
            sender.send(image_message(number, frame, synthetic_image(frame, SHAPE)[0]))
        sender.send(series_end_message(numbers[-1] + 1))

    data, monitor = run_monitor_on_sent(
        tmp_path, config, broadcast, sender, send, lambda m: m["num_events"] >= good and all(
            m["problems"].get(kind, 0) >= n for kind, n in expected.items()))
    assert data["num_events"] == good
    # One rank received the header, the other processed its images with the fallbacks.
    assert data["problems"] == expected | {"image_without_header": 1}
    lines = reported_lines(monitor.stderr, expected)  # one line each (rate-limited)
    assert all(len(line) < 400 for line in lines)
    assert f"final summary: {good} events" in monitor.stdout


@pytest.mark.slow
@pytest.mark.parametrize("source, remove, expected", [
    ("http://receiver:9999", None, "a streaming-receiver source is one ZeroMQ URL"),
    (None, "fallback_beam_energy_in_eV",
     "data_retrieval_layer/fallback_beam_energy_in_eV: required key is missing"),
])
def test_start_up_errors_stop_every_rank(tmp_path, source, remove, expected):
    config, _ = _configuration(tmp_path)
    if remove:
        config.write_text("\n".join(line for line in config.read_text().splitlines()
                                    if not line.strip().startswith(remove + ":")))
    monitor = Process(monitor_command(source or f"tcp://127.0.0.1:{free_port()}", config),
                      tmp_path, "monitor")
    try:
        code = monitor.wait(120)
    finally:
        if monitor.popen.poll() is None:  # (a hang: stop it, the test then fails)
            monitor.stop()
    errors = [line for line in monitor.stderr.splitlines() if "error:" in line]
    print(monitor.stderr)
    assert code != 0
    assert len(errors) == 1 and expected in errors[0]


# Documentation -----------------------------------------------------------------------------------

def test_keys_and_problem_kinds_are_documented():
    kinds = problem_kinds(handler_module)
    assert kinds == set(PROBLEM_KINDS)
    assert_source_documented("source_streaming_receiver.md", StreamingReceiverDataRetrieval,
                             kinds)
