# SPDX-License-Identifier: GPL-3.0-or-later
"""DECTRIS Stream V2 (DECTRIS SIMPLON 1.8+, Jungfraujoch): decoding, Data Sources, bad input,
and the whole monitor fed by ``om_simulator.py dectris-stream`` over real sockets on 127.0.0.1.

The messages are made by :mod:`om.simulation.dectris_stream_sender` or by cbor2 here, both
written from the published format, never with om's decoder.
"""

import datetime
import struct

import cbor2
import numpy as np
import pytest
from helpers import (
    FALLBACK_EV,
    FALLBACK_MM,
    assert_damaged_messages_are_dropped,
    assert_one_zeromq_url_source,
    assert_source_documented,
    configure_stream,
    counts_during,
    extract_messages,
    free_port,
    monitor_parameters,
    problem_kinds,
    receive_sent_events,
    reported_lines,
    run_monitor_on_sent,
    run_monitor_on_simulator,
    run_sender_main,
)

from om.data_retrieval_layer.cbor_stream_v2 import (
    MAX_IMAGE_PIXELS,
    StreamV2Error,
    decode_array,
    decode_message,
    parse_image,
)
from om.data_retrieval_layer.data_event_handler_dectris_stream import (
    DectrisStreamMessages,
)
from om.data_retrieval_layer.data_retrieval_dectris_stream import (
    DectrisStreamDataRetrieval,
)
from om.lib.parameters import MonitorParameters
from om.simulation import dectris_stream_sender as sender_module
from om.simulation.dectris_stream_sender import (
    DectrisStreamSender,
    encode_image,
    end_message,
    image_message,
    spot_count,
    start_message,
    synthetic_frame,
)

SHAPE = (512, 512)


def _configuration(tmp_path, **crystallography):
    """A monitor.yaml for DectrisStreamDataRetrieval; returns (path, broadcast URL)."""
    return configure_stream(tmp_path, "DectrisStreamDataRetrieval", {"stream_channel": None},
                            **crystallography)


def _parameters(tmp_path) -> MonitorParameters:
    return monitor_parameters(_configuration(tmp_path)[0], DectrisStreamDataRetrieval)


# Decoding --------------------------------------------------------------------------------------

@pytest.mark.parametrize("tag, dtype", [
    (64, "u1"), (65, ">u2"), (66, ">u4"), (67, ">u8"), (69, "<u2"), (70, "<u4"), (71, "<u8"),
    (72, "i1"), (73, ">i2"), (74, ">i4"), (75, ">i8"), (77, "<i2"), (78, "<i4"), (79, "<i8"),
    (80, ">f2"), (81, ">f4"), (82, ">f8"), (84, "<f2"), (85, "<f4"), (86, "<f8"),
])
def test_every_rfc8746_typed_array_decodes_to_its_values(tag, dtype):
    values = (np.arange(12) * 7 - (20 if np.dtype(dtype).kind != "u" else 0)).reshape(3, 4)
    array = values.astype(dtype)
    message = cbor2.dumps({"type": "x", "a": cbor2.CBORTag(40, [[3, 4],
                                                               cbor2.CBORTag(tag, array.tobytes())])})
    decoded = decode_array(decode_message(message)["a"])
    assert decoded.dtype == np.dtype(dtype).newbyteorder("=") and decoded.dtype.isnative
    np.testing.assert_array_equal(decoded, values.astype(decoded.dtype))


def test_column_major_arrays_tag_1040():
    values = np.arange(6, dtype="<u2").reshape(2, 3)
    message = cbor2.dumps({"type": "x", "a": cbor2.CBORTag(1040, [
        [2, 3], cbor2.CBORTag(69, values.tobytes(order="F"))])})
    np.testing.assert_array_equal(decode_array(decode_message(message)["a"]), values)


@pytest.mark.parametrize("compression", ["bslz4", "bszstd", "none"])
@pytest.mark.parametrize("dtype", ["uint16", "uint32", "int32"])
@pytest.mark.parametrize("self_described", [True, False])
def test_images_decode_bit_for_bit(compression, dtype, self_described):
    image, spots = synthetic_frame(3, SHAPE, dtype=dtype)
    message = image_message(7, "u7", 3, image, compression=compression, spots=spots,
                            self_described=self_described)
    info = parse_image(decode_message(message))
    assert info.image.dtype == image.dtype and info.image.shape == SHAPE
    assert info.image.tobytes() == image.tobytes()
    assert (info.series_id, info.image_id, info.series_unique_id) == (7, 3, "u7")
    for key in ("fs", "ss", "intensity"):
        np.testing.assert_array_equal(info.spots[key], spots[key])


def test_the_timestamp_is_series_date_plus_start_time():
    date = datetime.datetime(2024, 5, 6, 7, 8, 9, 250000, tzinfo=datetime.timezone.utc)
    image, _ = synthetic_frame(0, SHAPE)
    info = parse_image(decode_message(image_message(1, "u", 0, image, series_date=date,
                                                    start_time=1.5)))
    assert info.timestamp == pytest.approx(date.timestamp() + 1.5, abs=1e-6)


def test_flat_spot_lists_of_early_jungfraujoch_versions():
    image, _ = synthetic_frame(0, SHAPE)
    content = {"type": "image", "series_id": 1, "image_id": 0,
               "data": {"default": encode_image(image, "none")},
               "spots": [10.0, 20.0, 300.0, 30.5, 40.5, 50.0]}
    info = parse_image(decode_message(cbor2.dumps(content)))
    np.testing.assert_array_equal(info.spots["fs"], [10.0, 30.5])
    np.testing.assert_array_equal(info.spots["ss"], [20.0, 40.5])
    np.testing.assert_array_equal(info.spots["intensity"], [300.0, 50.0])


def test_a_channel_is_chosen_by_name():
    a, _ = synthetic_frame(0, SHAPE)
    b, _ = synthetic_frame(1, SHAPE)
    content = {"type": "image", "series_id": 1, "image_id": 0,
               "data": {"threshold_1": encode_image(a), "threshold_2": encode_image(b)}}
    message = decode_message(cbor2.dumps(content))
    np.testing.assert_array_equal(parse_image(message).image, a)
    np.testing.assert_array_equal(parse_image(message, "threshold_2").image, b)
    with pytest.raises(StreamV2Error, match="no channel 'x'"):
        parse_image(message, "x")


# Messages and Data Sources ---------------------------------------------------------------------

def _extract(tmp_path, messages: list[bytes]) -> list[dict]:
    """Runs messages through one rank's message handling and the Data Sources."""
    retrieval = DectrisStreamDataRetrieval(parameters=_parameters(tmp_path),
                                           source="tcp://127.0.0.1:1")
    return extract_messages(retrieval.get_data_event_handler(), messages)


def test_data_sources_use_the_start_message_and_fall_back_without_it(tmp_path):
    image, spots = synthetic_frame(0, SHAPE)
    date = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
    messages = [
        image_message(4, "u4", 0, image, series_date=date),  # no start on this rank
        start_message(5, "u5", image_shape=SHAPE, number_of_images=2, incident_energy=8000.0,
                      detector_distance=0.12),
        image_message(5, "u5", 1, image, spots=spots, series_date=date, start_time=2.0),
        image_message(6, "u6", 0, image),  # a later series whose start went elsewhere
        end_message(5, "u5"),
    ]
    data, counts = counts_during(lambda: _extract(tmp_path, messages))
    assert counts == {"image_without_start": 2}
    assert [d["event_id"] for d in data] == ["4:0", "5:1", "6:0"]
    assert [d["beam_energy"] for d in data] == [FALLBACK_EV, 8000.0, FALLBACK_EV]
    assert [d["detector_distance"] for d in data] == [FALLBACK_MM, pytest.approx(120.0),
                                                      FALLBACK_MM]
    assert data[1]["timestamp"] == pytest.approx(date.timestamp() + 2.0)
    assert isinstance(data[1]["timestamp"], np.float64)
    assert data[0]["detector_spots"] is None and data[2]["detector_spots"] is None
    np.testing.assert_array_equal(data[1]["detector_spots"]["fs"], spots["fs"])
    frame = data[1]["detector_data"]
    assert frame.dtype == np.float32 and frame.shape == SHAPE
    masked = image == 65535
    assert masked.sum() == 16 and np.isnan(frame[masked]).all()
    np.testing.assert_array_equal(frame[~masked], image[~masked].astype(np.float32))


@pytest.mark.parametrize("dtype, masked_value", [("uint32", 2**32 - 1), ("int32", -2**31)])
def test_masked_pixels_of_other_types_are_nan(tmp_path, dtype, masked_value):
    image, _ = synthetic_frame(0, SHAPE, dtype=dtype)
    (data,) = _extract(tmp_path, [image_message(1, "u", 0, image, compression="none")])
    assert (image == masked_value).sum() == 16
    assert np.isnan(data["detector_data"]).sum() == 16


def _image_content(image, **changes):
    content = {"type": "image", "series_id": 1, "image_id": 0,
               "data": {"default": encode_image(image, "none")}}
    content.update(changes)
    return content


def _bslz4_blob(image):
    return encode_image(image, "bslz4").value[1].value.value[2]


def _with_blob(image, algorithm, blob, element_size=2, dims=None):
    array = cbor2.CBORTag(40, [dims or list(image.shape),
                               cbor2.CBORTag(69, cbor2.CBORTag(56500, [algorithm, element_size,
                                                                       blob]))])
    return cbor2.dumps(_image_content(image, data={"default": array}))


def _bad_messages():
    """(name, message bytes, expected problem kind), each followed in the test by good input."""
    image, _ = synthetic_frame(0, SHAPE)
    blob = _bslz4_blob(image)
    zstd = encode_image(image, "bszstd").value[1].value.value[2]
    corrupt_zstd = zstd[:16] + b"\0\0\0\0" + zstd[20:]  # the first block's zstd magic number
    good = image_message(1, "u", 0, image)
    raw = image.tobytes()
    return [
        ("undecodable bytes", b"\xff\x00 not CBOR", "bad_cbor"),
        ("truncated CBOR", good[: len(good) // 2], "bad_cbor"),
        ("trailing bytes", good + b"\x00", "bad_cbor"),
        ("bad date-time", cbor2.dumps(_image_content(
            image, series_date=cbor2.CBORTag(0, "yesterday"))), "bad_cbor"),
        ("too deep", b"\x81" * 100 + b"\x00", "bad_cbor"),
        ("not a map", cbor2.dumps([1, 2, 3]), "bad_stream_message"),
        ("no type", cbor2.dumps({"series_id": 1}), "bad_stream_message"),
        ("missing keys", cbor2.dumps({"type": "image", "series_id": 1}), "bad_stream_message"),
        ("wrong series_id type", cbor2.dumps(_image_content(image, series_id="1")),
         "bad_stream_message"),
        ("data not a map", cbor2.dumps(_image_content(image, data=[1])), "bad_stream_message"),
        ("data not tag 40", cbor2.dumps(_image_content(image, data={"default": raw})),
         "bad_stream_message"),
        ("tag 40 of a plain array", cbor2.dumps(_image_content(
            image, data={"default": cbor2.CBORTag(40, [[1, 2], [3, 4]])})),
         "bad_stream_message"),
        ("bad tag 56500", cbor2.dumps(_image_content(image, data={"default": cbor2.CBORTag(
            40, [[512, 512], cbor2.CBORTag(69, cbor2.CBORTag(56500, ["bslz4", blob]))])})),
         "bad_stream_message"),
        ("start without series_id", cbor2.dumps({"type": "start"}), "bad_stream_message"),
        ("unknown message type", cbor2.dumps({"type": "status"}), "unknown_message_type"),
        ("unknown compression", _with_blob(image, "lz4", blob), "unknown_compression"),
        ("truncated bslz4", _with_blob(image, "bslz4", blob[:-100]), "bad_compressed_data"),
        ("bslz4 without header", _with_blob(image, "bslz4", blob[:6]), "bad_compressed_data"),
        ("corrupt bszstd block", _with_blob(image, "bszstd", corrupt_zstd),
         "bad_compressed_data"),
        ("truncated bszstd", _with_blob(image, "bszstd", zstd[:-50]), "bad_compressed_data"),
        ("bslz4 header size", _with_blob(image, "bslz4", struct.pack(">QI", 1000, 8192)
                                         + blob[12:]), "wrong_size"),
        ("bslz4 element size", _with_blob(image, "bslz4", blob, element_size=4), "wrong_size"),
        ("bslz4 of other dims", _with_blob(image, "bslz4", blob, dims=[512, 256]),
         "wrong_size"),
        ("raw bytes short", cbor2.dumps(_image_content(image, data={"default": cbor2.CBORTag(
            40, [[512, 512], cbor2.CBORTag(69, raw[:-2])])})), "wrong_size"),
        ("3-D image", cbor2.dumps(_image_content(image, data={"default": cbor2.CBORTag(
            40, [[1, 512, 512], cbor2.CBORTag(69, raw)])})), "wrong_size"),
        ("huge dims", _with_blob(image, "bslz4", struct.pack(">QI", 2 * 2**40, 8192),
                                 dims=[2**20, 2**20]), "wrong_size"),
        ("empty dims", cbor2.dumps(_image_content(image, data={"default": cbor2.CBORTag(
            40, [[0, 512], cbor2.CBORTag(69, b"")])})), "wrong_size"),
    ]


@pytest.mark.parametrize("name, message, kind", _bad_messages(),
                         ids=[case[0] for case in _bad_messages()])
def test_bad_messages_are_counted_and_the_next_image_is_processed(name, message, kind):
    state = DectrisStreamMessages()
    image, _ = synthetic_frame(1, SHAPE)
    event, counts = counts_during(lambda: state.handle(message, 0.0))
    assert event is None and counts == {kind: 1}
    event = state.handle(image_message(1, "u", 1, image), 0.0)
    assert event["image"].tobytes() == image.tobytes()


def test_damaged_messages_never_raise():
    # Random damage to good messages (bytes changed, cut short): each is either a correct
    # image or counted and dropped; nothing raises, nothing crashes the process.
    image, spots = synthetic_frame(0, (128, 128))
    messages = [image_message(1, "u", 0, image, compression=c, spots=spots)
                for c in ("bslz4", "bszstd", "none")]
    messages.append(start_message(1, "u", image_shape=(128, 128), number_of_images=1))

    def damage(message, trial, rng):
        damaged = bytearray(message)
        if trial % 3 == 0:
            damaged = damaged[:rng.integers(len(damaged))]
        else:
            for _ in range(rng.integers(1, 6)):
                damaged[rng.integers(len(damaged))] = rng.integers(256)
        return bytes(damaged)

    assert_damaged_messages_are_dropped(DectrisStreamMessages(), messages, damage, 5,
                                        MAX_IMAGE_PIXELS)


def test_huge_declared_sizes_allocate_nothing():
    message = cbor2.dumps({"type": "x", "a": cbor2.CBORTag(40, [[2**31, 2**31], cbor2.CBORTag(
        70, cbor2.CBORTag(56500, ["bszstd", 4, struct.pack(">QI", 2**64 - 1, 8192)]))])})
    with pytest.raises(StreamV2Error, match=f"more than the {MAX_IMAGE_PIXELS}") as error:
        decode_array(decode_message(message)["a"])
    assert error.value.kind == "wrong_size"


def test_images_of_another_size_than_the_start_message_says_are_dropped():
    state = DectrisStreamMessages()
    state.handle(start_message(1, "u", image_shape=(256, 512), number_of_images=1), 0.0)
    image, _ = synthetic_frame(0, SHAPE)
    event, counts = counts_during(lambda: state.handle(image_message(1, "u", 0, image), 0.0))
    assert event is None and counts == {"wrong_size": 1}


def test_malformed_optional_fields_are_ignored_and_counted():
    state = DectrisStreamMessages()
    start = cbor2.dumps({"type": "start", "series_id": 2, "incident_energy": "12 keV",
                         "detector_distance": -1.0, "image_size_x": 512, "image_size_y": 512})
    image, _ = synthetic_frame(0, SHAPE)
    bad_spots = cbor2.dumps(_image_content(image, series_id=2, spots=[{"x": 1.0}],
                                           start_time="soon", series_date=datetime.datetime(
                                               2024, 1, 1, tzinfo=datetime.timezone.utc)))
    (_, event), counts = counts_during(lambda: (state.handle(start, 0.0),
                                                 state.handle(bad_spots, 42.0)))
    assert counts == {"bad_stream_metadata": 4}
    assert event["beam_energy"] is None and event["detector_distance"] is None
    assert event["spots"] is None and event["timestamp"] == 42.0


def test_the_source_must_be_one_zeromq_url(tmp_path):
    assert_one_zeromq_url_source(DectrisStreamDataRetrieval, _parameters(tmp_path),
                                 "tcp://dcu:31001", "1:0", "cannot connect to the detector stream")


# Real PUSH/PULL sockets, in process -------------------------------------------------------------

@pytest.mark.parametrize("compression", ["bslz4", "bszstd", "none"])
def test_handler_receives_the_sent_images_bit_for_bit(tmp_path, compression):
    sender = DectrisStreamSender("tcp://127.0.0.1:0")
    retrieval = DectrisStreamDataRetrieval(parameters=_parameters(tmp_path), source=sender.url)
    sent = [synthetic_frame(i, SHAPE, dtype="uint16" if i % 2 else "uint32") for i in range(6)]

    def send():
        sender.send(start_message(3, "u3", image_shape=SHAPE, number_of_images=6,
                                  incident_energy=11000.0, detector_distance=0.2))
        for index, (image, spots) in enumerate(sent):
            sender.send(image_message(3, "u3", index, image, compression=compression,
                                      spots=spots))
        sender.send(end_message(3, "u3"))

    received = receive_sent_events(retrieval.get_data_event_handler(), sender, len(sent), send)
    assert len(received) == len(sent)
    for (image, spots), (decoded, data) in zip(sent, received):
        assert decoded.dtype == image.dtype and decoded.tobytes() == image.tobytes()
        masked = image == np.iinfo(image.dtype).max
        np.testing.assert_array_equal(data["detector_data"][~masked],
                                      image[~masked].astype(np.float32))
        assert np.isnan(data["detector_data"][masked]).all()
        assert data["beam_energy"] == 11000.0 and data["detector_distance"] == 200.0
        np.testing.assert_array_equal(data["detector_spots"]["ss"], spots["ss"])
    assert [d["event_id"] for _, d in received] == [f"3:{i}" for i in range(6)]
    counts = retrieval.get_data_event_handler().counters()
    assert counts["starts"] == 1 and counts["images"] == 6 and counts["dropped"] == 0


# The whole monitor: mpiexec -n 3 om_monitor.py ----------------------------------------------------

@pytest.mark.slow
def test_monitor_end_to_end(tmp_path):
    frames = 16
    config, broadcast = _configuration(tmp_path)
    data, (frame, *_), _ = run_monitor_on_simulator(
        tmp_path, config, broadcast, "dectris-stream", frames, "--rate", "20",
        "--compression", "bslz4", "--jungfraujoch-spots", "--wait-for-clients", "2",
        "--wait-timeout", "180")
    assert data["num_events"] == frames
    per_rank = data["num_events_per_rank"]
    assert set(per_rank) == {"1", "2"} and min(per_rank.values()) >= 1
    expected_peaks = [spot_count(i) for i in range(frames)]
    assert data["num_hits"] == sum(count > 5 for count in expected_peaks)
    assert data["peakogram"].sum() == sum(expected_peaks)  # every spot found, once
    # One rank got the start message, the other uses the fallbacks for the series.
    assert data["problems"] == {"image_without_start": 1}
    assert data["beam_energy"] in (12400.0, FALLBACK_EV)
    # A hit frame: its peaks are the sent spots, which Jungfraujoch-style spots pass through.
    assert frame["num_peaks"] == 15 and frame["frame_is_hit"]
    image_id = int(frame["event_id"].split(":")[1])
    _, spots = synthetic_frame(image_id, SHAPE)
    rows = 511 - spots["ss"]  # the panel's ss axis is +y, and +y is up in the assembled frame
    assert sorted(frame["detector_spots_x_in_frame"]) == pytest.approx(sorted(spots["fs"]))
    assert sorted(frame["detector_spots_y_in_frame"]) == pytest.approx(sorted(rows))
    assert sorted(frame["peak_list_x_in_frame"]) == pytest.approx(sorted(spots["fs"]), abs=0.5)
    assert sorted(frame["peak_list_y_in_frame"]) == pytest.approx(sorted(rows), abs=0.5)
    assert frame["frame_data"].shape == SHAPE and np.isnan(frame["frame_data"]).sum() == 16


@pytest.mark.slow
def test_bad_input_end_to_end(tmp_path):
    config, broadcast = _configuration(tmp_path)
    sender = DectrisStreamSender(f"tcp://127.0.0.1:{free_port()}")
    good = 8
    bad = {name: (message, kind) for name, message, kind in _bad_messages()
           if name in ("undecodable bytes", "not a map", "missing keys", "wrong series_id type",
                       "unknown compression", "truncated bslz4", "bslz4 header size")}
    expected = {}
    for _, kind in bad.values():
        expected[kind] = expected.get(kind, 0) + 1

    def send():
        for message, _ in bad.values():
            sender.send(message)
        image, _ = synthetic_frame(0, SHAPE)
        sender.send(image_message(1, "u1", 0, image))  # an image before any start
        sender.send(start_message(1, "u1", image_shape=SHAPE, number_of_images=good))
        for index in range(1, good + 1):
            sender.send(image_message(1, "u1", index, synthetic_frame(index, SHAPE)[0]))
        sender.send(end_message(1, "u1"))

    data, monitor = run_monitor_on_sent(
        tmp_path, config, broadcast, sender, send, lambda m: m["num_events"] >= good + 1 and all(
            m["problems"].get(kind, 0) >= n for kind, n in expected.items()))
    assert data["num_events"] == good + 1
    counts = dict(data["problems"])
    assert 1 <= counts.pop("image_without_start") <= 2  # once per rank without the start
    assert counts == expected
    reported_lines(monitor.stderr, expected)  # one line each (rate-limited)
    assert f"final summary: {good + 1} events" in monitor.stdout


def test_the_sender_runs_as_a_module(tmp_path):
    # main(argv) with a client pulling in this process: exit code 0, start/images/end sent.
    code, messages = run_sender_main(sender_module.main, [
        "--frames", "3", "--rate", "0", "--compression", "bszstd", "--no-self-described",
        "--wait-timeout", "30"], 5)
    types = [decode_message(parts[0])["type"] for parts in messages]
    assert code == 0
    assert types == ["start", "image", "image", "image", "end"]


# Documentation -----------------------------------------------------------------------------------

def test_keys_and_problem_kinds_are_documented():
    from om.data_retrieval_layer import (
        cbor_stream_v2,
        data_event_handler_dectris_stream,
    )

    kinds = problem_kinds(cbor_stream_v2, data_event_handler_dectris_stream)
    assert {"bad_cbor", "unknown_compression", "image_without_start"} <= kinds
    assert_source_documented("source_dectris_stream.md", DectrisStreamDataRetrieval, kinds)
