"""Property: any mutation of one stored record is either restored as written or
quarantined with a message naming it; never a crash, and never a cost to the others."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import trio
import trio.testing
from fakes import device_record, simulated
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge_actors import DeviceInfo
from bridge_actors._services.persist import SessionStore
from bridge_actors._services.sessions import (
    BACKEND_DISABLED,
    SessionRegistry,
    session_record_problem,
)

DEVICE_FIELDS = (
    "udid",
    "name",
    "device_type",
    "ios_version",
    "point_width",
    "point_height",
    "pixel_width",
    "pixel_height",
    "backend",
    "source",
)
OTHER_IDS = ("keep-first", "keep-last")


def good_record(session_id: str, udid: str) -> dict[str, Any]:
    return {
        "session_id": session_id,
        "created_at": 1_700_000_000.5,
        "device": device_record(udid, name=f"bridge-{udid}"),
    }


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**40), max_value=2**40)
    | st.sampled_from([0, 1, 8192, 8193, 10**9, -1])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
    | st.sampled_from(["simulated", "ios", "", " ", "keep\n", "x" * 300])
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=6,
)
# A different id of the same kind, or anything at all; never another record's id
# (a duplicate id is a conflict between two records, not damage to one).
new_ids = (st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True) | json_values).filter(
    lambda value: value not in OTHER_IDS
)


@st.composite
def mutated_records(draw) -> Any:
    record = good_record("mutant", "MUTANT-UDID")
    kind = draw(
        st.sampled_from(
            ["device field", "drop device field", "top field", "drop top field", "extra", "whole"]
        )
    )
    if kind == "device field":
        record["device"][draw(st.sampled_from(DEVICE_FIELDS))] = draw(json_values)
    elif kind == "drop device field":
        del record["device"][draw(st.sampled_from(DEVICE_FIELDS))]
    elif kind == "top field":
        name = draw(st.sampled_from(["session_id", "created_at", "device"]))
        record[name] = draw(new_ids if name == "session_id" else json_values)
    elif kind == "drop top field":
        del record[draw(st.sampled_from(["session_id", "created_at", "device"]))]
    elif kind == "extra":
        record[draw(st.text(min_size=1, max_size=8))] = draw(json_values)
    else:
        return draw(json_values)
    return record


def restore(state_dir: Path, records: list[Any]):
    """Write ``records`` as the session file, start a registry on it; what it made of them."""
    state_dir.mkdir()
    (state_dir / "sessions.json").write_text(
        json.dumps({"version": 1, "saved_at": 0, "sessions": records}, allow_nan=False)
    )
    outcome: dict[str, Any] = {}

    async def main() -> None:
        store = SessionStore(state_dir, check=session_record_problem)
        registry = SessionRegistry({"simulated": simulated()}, store)
        async with trio.open_nursery() as nursery:
            await nursery.start(registry.run)
            outcome["live"] = {s.session_id: s for s in registry.sessions()}
            outcome["held"] = {h.session_id: h for h in registry.held()}
            outcome["problem"] = registry.load_problem
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return outcome


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutant=mutated_records())
def test_a_mutated_record_is_restored_as_written_or_quarantined(mutant):
    first, last = good_record(OTHER_IDS[0], "FIRST-UDID"), good_record(OTHER_IDS[1], "LAST-UDID")
    with tempfile.TemporaryDirectory() as directory:
        state_dir = Path(directory) / "state"
        outcome = restore(state_dir, [first, mutant, last])
        asides = sorted(state_dir.glob("sessions.json.corrupt-*"))

        # The others are untouched, whatever happened to the mutant.
        for other in (first, last):
            session = outcome["live"][other["session_id"]]
            assert session.device == DeviceInfo.from_record(other["device"])
            assert session.created_at == other["created_at"]

        mutant_id = mutant.get("session_id") if isinstance(mutant, dict) else None
        kept = None
        if isinstance(mutant_id, str):
            kept = outcome["live"].get(mutant_id) or outcome["held"].get(mutant_id)
        if kept is not None:
            # Restored: exactly as written (or held for a backend this server lacks).
            assert session_record_problem(mutant) is None
            assert kept.device == DeviceInfo.from_record(mutant["device"])
            if mutant.get("created_at") is not None:
                assert kept.created_at == mutant["created_at"]
            device = kept.device
            assert all(
                1 <= getattr(device, name) <= 8192
                for name in ("point_width", "point_height", "pixel_width", "pixel_height")
            )
            if mutant_id in outcome["held"]:
                assert kept.state == BACKEND_DISABLED and device.backend != "simulated"
            assert outcome["problem"] is None and asides == []
        else:
            # Quarantined: named in the message, and kept aside as it was.
            problem = outcome["problem"]
            assert problem is not None and "#1: " in problem
            if isinstance(mutant_id, str):
                assert repr(mutant_id)[:40] in problem or "session_id" in problem
            [aside] = asides
            assert json.loads(aside.read_text())["sessions"][1] == mutant
            assert len(outcome["live"]) + len(outcome["held"]) == 2


def test_the_property_sees_both_outcomes():
    """The mutations above are not all harmless, nor all fatal (the property is not vacuous)."""
    with tempfile.TemporaryDirectory() as directory:
        harmless = good_record("mutant", "MUTANT-UDID") | {"note": "kept as it was"}
        outcome = restore(Path(directory) / "a", [harmless])
        assert "mutant" in outcome["live"]
        broken = good_record("mutant", "MUTANT-UDID")
        broken["device"]["pixel_width"] = 10**9
        outcome = restore(Path(directory) / "b", [broken])
        assert outcome["live"] == {} and "device.pixel_width" in outcome["problem"]
