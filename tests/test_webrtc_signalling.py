"""The WebRTC signalling parser: every message either parses or is BadInput naming a field."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge_actors import BadInput
from bridge_actors._webrtc.signalling import (
    SIGNAL_TYPES,
    Candidate,
    Offer,
    Preference,
    StatusRequest,
    parse_signal,
    usable_candidate,
    usable_offer_sdp,
)

H264_OFFER = (
    "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 H264/90000\r\n"
    "a=candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host\r\n"
    "a=candidate:2 1 udp 2122260223 0b1c2d3e.local 50001 typ host\r\n"
    "a=candidate:3 1 tcp 1518280447 127.0.0.1 9 typ host tcptype active\r\n"
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
messages = st.dictionaries(
    st.sampled_from(["type", "sdp", "offer", "candidate", "quality", "fps", "sdpMid"]),
    json_values,
    max_size=5,
) | st.fixed_dictionaries(
    {"type": st.sampled_from([*SIGNAL_TYPES, "answer", ""])},
    optional={
        "sdp": st.text(max_size=200) | st.just(H264_OFFER),
        "candidate": json_values
        | st.fixed_dictionaries(
            {"candidate": st.text(max_size=80)},
            optional={"sdpMid": json_values, "sdpMLineIndex": json_values},
        ),
        "quality": st.sampled_from(["low", "high", "extreme", 3]),
        "fps": json_values,
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages)
def test_any_message_parses_or_names_what_is_wrong(message):
    try:
        signal = parse_signal(message)
    except BadInput as error:
        assert error.field in {
            "type",
            "sdp",
            "candidate",
            "sdpMid",
            "sdpMLineIndex",
            "quality",
            "fps",
        }
    else:
        assert isinstance(signal, Offer | Candidate | Preference | StatusRequest)


def test_the_viewers_messages_parse():
    assert parse_signal({"type": "offer", "sdp": H264_OFFER}) == Offer(H264_OFFER)
    assert parse_signal({"type": "offer", "offer": {"type": "offer", "sdp": H264_OFFER}}).sdp
    line = "candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host"
    candidate = {"candidate": line, "sdpMid": "0", "sdpMLineIndex": 0}
    assert parse_signal({"type": "ice-candidate", "candidate": candidate}) == Candidate(
        line.removeprefix("candidate:"), "0", 0
    )
    assert parse_signal({"type": "ice-candidate", "candidate": None}) == Candidate(None, None, None)
    assert parse_signal({"type": "quality-change", "quality": "low"}) == Preference(
        "quality-change", "low", None
    )
    assert parse_signal({"type": "start-stream", "quality": "high", "fps": 30}).fps == 30.0
    assert parse_signal({"type": "status-request"}) == StatusRequest()


@pytest.mark.parametrize(
    ("sdp", "problem"),
    [
        ("hello", "is not SDP"),
        ("v=0\r\nm=audio 9 RTP/AVP 0\r\n", "offers no video"),
        ("v=0\r\nm=video 9 RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\n", "offers no H.264"),
    ],
)
def test_offers_we_cannot_answer_say_why(sdp, problem):
    with pytest.raises(BadInput, match=problem):
        parse_signal({"type": "offer", "sdp": sdp})


def test_mdns_and_tcp_candidates_are_left_out():
    kept = usable_offer_sdp(H264_OFFER)
    assert "127.0.0.1 50000" in kept and ".local" not in kept and " tcp " not in kept
    local = Candidate("2 1 udp 2122260223 0b1c2d3e.local 50001 typ host", "0", 0)
    assert not usable_candidate(local)
    assert usable_candidate(Candidate("1 1 udp 2122260223 127.0.0.1 50000 typ host", "0", 0))
