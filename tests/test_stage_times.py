# SPDX-License-Identifier: GPL-3.0-or-later
"""Stage times of the processing ranks: sums, the message between ranks, the report line."""

import math

import pytest

from om.lib.serialization import pack, unpack
from om.lib.stage_times import STAGES, StageTimes, describe_per_event


def _event(next_event=0.001, data_retrieval=0.002, processing=0.003, sending=0.0005):
    return {"next_event": next_event, "data_retrieval": data_retrieval,
            "processing": processing, "sending": sending}


def test_sums_travel_between_ranks_as_msgpack_and_add_up():
    processing_rank_1, processing_rank_2, collecting = StageTimes(), StageTimes(), StageTimes()
    for _ in range(3):
        processing_rank_1.add_event(_event())
    processing_rank_2.add_event(_event(processing=0.006))
    for rank in (processing_rank_1, processing_rank_2):
        collecting.merge(unpack(pack(rank.take_unsent())))
    events, seconds = collecting.totals()
    assert events == 4
    assert seconds["processing"] == pytest.approx(3 * 0.003 + 0.006)
    assert seconds["sending"] == pytest.approx(4 * 0.0005)
    # What was sent is not sent again; the rank's own totals keep everything.
    assert processing_rank_1.take_unsent() == {"events": 0, "seconds": dict.fromkeys(STAGES, 0.0)}
    assert processing_rank_1.totals()[0] == 3


def test_describe_per_event_gives_milliseconds_per_event_between_two_totals():
    times = StageTimes()
    earlier = times.totals()
    assert describe_per_event(earlier, times.totals()) == ""  # no event in between
    times.add_event(_event(processing=0.001))
    times.add_event(_event(processing=0.003))
    assert describe_per_event(earlier, times.totals()) == (
        "next_event 1.00, data_retrieval 2.00, processing 2.00, sending 0.50 ms")


@pytest.mark.parametrize("sent, reason", [
    (None, "malformed"),
    ([1, 2], "malformed"),
    ({"events": 1}, "malformed"),
    ({"events": "x", "seconds": {}}, "malformed"),
    ({"events": 1, "seconds": {"processing": "fast"}}, "malformed"),
    ({"events": 1, "seconds": {"peakfinding": 0.1}}, "unknown stage 'peakfinding'"),
    ({"events": -1, "seconds": {"processing": 0.1}}, "negative or non-finite"),
    ({"events": 1, "seconds": {"processing": -0.1}}, "negative or non-finite"),
    ({"events": 1, "seconds": {"processing": math.nan}}, "negative or non-finite"),
    ({"events": 1, "seconds": {"processing": math.inf}}, "negative or non-finite"),
])
def test_a_malformed_message_is_refused_whole(sent, reason):
    times = StageTimes()
    times.add_event(_event())
    before = times.totals()
    with pytest.raises(ValueError, match=reason):
        times.merge(sent)
    assert times.totals() == before
