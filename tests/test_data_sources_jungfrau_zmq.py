# SPDX-License-Identifier: GPL-3.0-or-later
"""The JUNGFRAU 1M Data Sources on events as the handler makes them (buffers from ZeroMQ)."""

import numpy as np
import pytest

from om.data_retrieval_layer.data_retrieval_jungfrau_zmq import Jungfrau1MZmqDataRetrieval
from om.lib.exceptions import OmConfigurationError, OmDataExtractionError
from om.lib.parameters import MonitorParameters
from om.simulation.configuration import write_monitor_configuration
from om.simulation.jungfrau_frames import SyntheticJungfrau


def _handler(tmp_path, **data_retrieval):
    darks, gains = SyntheticJungfrau(seed=3).write_calibration_files(tmp_path / "calibration")
    config = write_monitor_configuration(tmp_path / "monitor.yaml", {"data_retrieval_layer": {
        "detector_dark_filenames": darks, "detector_gain_filenames": gains, **data_retrieval}})
    parameters = MonitorParameters(config)
    parameters.validate(Jungfrau1MZmqDataRetrieval.parameter_groups, complete=False)
    retrieval = Jungfrau1MZmqDataRetrieval(parameters=parameters,
                                           source="tcp://127.0.0.1:1,tcp://127.0.0.1:2")
    handler = retrieval.get_data_event_handler()
    handler.initialize_event_handling_on_processing_node(
        node_rank=1, node_pool_size=2,
        collecting_node_info={"frame_endpoint": "tcp://x:1", "frame_secret": bytes(32)})
    return handler


def _event(raw, frame_number=7, timestamp=1.7e9):
    return {"metadata": {"frame_number": frame_number, "timestamp": timestamp, "headers": []},
            "images": [memoryview(raw[:512].tobytes()), memoryview(raw[512:].tobytes())]}


def test_calibrated_frame_and_metadata(tmp_path):
    detector = SyntheticJungfrau(seed=3)
    raw, is_hit, _ = detector.raw_frame(1)
    data = _handler(tmp_path).extract_data(event=_event(raw))
    frame = data["detector_data"]
    assert frame.shape == (1024, 1024) and frame.dtype == np.float32
    truth = detector.expected_photons(1)
    single_size = np.ones((1024, 1024), dtype=bool)  # away from the double-size pixels
    single_size[:, [255, 256, 511, 512, 767, 768]] = False
    single_size[[255, 256, 767, 768], :] = False
    g0 = ((raw >> 14) == 0) & single_size
    assert np.median(np.abs(frame[g0] - truth[g0])) < 0.2
    assert data["timestamp"] == np.float64(1.7e9) and data["timestamp"].dtype == np.float64
    assert data["event_id"] == "7"
    assert data["beam_energy"] == 12400.0 and data["detector_distance"] == 100.0


def test_raw_mode_gives_the_words(tmp_path):
    raw, _, _ = SyntheticJungfrau(seed=3).raw_frame(0)
    data = _handler(tmp_path, detector_calibration=False).extract_data(event=_event(raw))
    assert data["detector_data"].dtype == np.uint16
    np.testing.assert_array_equal(data["detector_data"], raw)


def test_wrong_size_event_raises_extraction_error(tmp_path):
    event = {"metadata": {"frame_number": 3, "timestamp": 0.0},
             "images": [memoryview(b"\0" * 10), memoryview(b"\0" * 10)]}
    with pytest.raises(OmDataExtractionError, match="frame 3"):
        _handler(tmp_path).extract_data(event=event)


def test_streams_cannot_retrieve_single_events(tmp_path):
    handler = _handler(tmp_path)
    with pytest.raises(NotImplementedError):
        handler.initialize_event_data_retrieval()
    with pytest.raises(NotImplementedError):
        handler.retrieve_event_data("12")


def test_source_must_name_two_or_four_streams(tmp_path):
    parameters = MonitorParameters(write_monitor_configuration(tmp_path / "m.yaml", {}))
    parameters.validate(Jungfrau1MZmqDataRetrieval.parameter_groups, complete=False)
    with pytest.raises(OmConfigurationError, match="needs 2 module stream URLs"):
        Jungfrau1MZmqDataRetrieval(parameters=parameters, source="tcp://127.0.0.1:30001")


def test_detector_spots_pass_through_the_processing_layer(tmp_path):
    from om.lib.package_data import packaged_file
    from om.processing_layer.crystallography import CrystallographyProcessing

    parameters = MonitorParameters(packaged_file("monitor.yaml"))
    parameters.validate(CrystallographyProcessing.parameter_groups, complete=False)
    processing = CrystallographyProcessing(parameters=parameters)
    processing.initialize_processing_node(node_rank=1, node_pool_size=2)
    spots = {"fs": [10.0, 20.5], "ss": [30.0, 40.0], "intensity": [5.0, 7.0]}
    data = {"detector_data": np.zeros((1024, 1024), dtype=np.float32), "timestamp": 1.0,
            "event_id": "1", "beam_energy": 12400.0, "detector_distance": 100.0,
            "detector_spots": spots}
    result, _ = processing.process_data(node_rank=1, node_pool_size=2, data=data)
    np.testing.assert_array_equal(result["detector_spots"]["fs"], [10.0, 20.5])
    assert result["detector_spots"]["intensity"].dtype == np.float64
    del data["detector_spots"]
    assert "detector_spots" not in processing.process_data(node_rank=1, node_pool_size=2,
                                                           data=data)[0]
