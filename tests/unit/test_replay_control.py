"""A replay's operator commands: placed between the bars they fell between, published before the next.

`replay_control.place` anchors each recorded command to the last bar whose marketdata watermark
was stored before it; `handlers.due_commands` picks those to say before a bar; `feeds.load_control`
checks a control file line by line.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from libs.cli import replay_control
from libs.cli.replay_control import Recorded
from libs.contracts.codec import decode_command
from libs.contracts.control import HaltTrading, ResumeTrading, ScheduledCommand
from services.marketdata import feeds, handlers
from services.marketdata.config import MdConfig

BAR = 60_000_000_000
WATERMARKS = [(1_000, 1 * BAR), (2_000, 2 * BAR), (3_000, 3 * BAR)]  # (stored ns, bar_ts)


def rec(seq: int, stored: int, verb: str, data: bytes, issuer: str = "") -> Recorded:
    return Recorded(stream_seq=seq, stored_ns=stored, verb=verb, data=data, issuer=issuer)


def test_place_when_commands_fall_between_watermarks_then_each_follows_the_last_bar_stored_before_it() -> None:
    placed = replay_control.place(
        WATERMARKS,
        [
            rec(1, 500, "kill", b'{"reason":"early"}'),  # before any bar
            rec(2, 2_000, "cancel_all", b"{}"),  # stored with bar 2's watermark: after bar 2
            rec(3, 2_500, "resume", b'{"reason":"ok"}'),
            rec(4, 9_000, "kill", b'{"reason":"late"}'),  # after the last bar
        ],
    )
    assert [(c.after, c.verb) for c in placed] == [
        (0, "kill"),
        (2 * BAR, "cancel_all"),
        (2 * BAR, "resume"),
        (3 * BAR, "kill"),
    ]
    kill = decode_command("kill", placed[0].body.encode())
    assert isinstance(kill, HaltTrading) and kill.reason == "early" and kill.ts_event == 0
    resume = decode_command("resume", placed[2].body.encode())
    assert isinstance(resume, ResumeTrading) and resume.ts_event == resume.ts_init == 2 * BAR
    assert resume.event_id and resume.event_id == resume.correlation_id == resume.causation_id


def test_place_when_said_by_a_service_or_undecodable_then_left_out() -> None:
    placed = replay_control.place(
        WATERMARKS,
        [
            rec(1, 1_500, "kill", b'{"reason":"RECON_MISMATCH"}', issuer="oms"),  # the replay says it again
            rec(2, 1_500, "kill", b'{"no_reason": 1}'),  # dead-lettered in the recording
            rec(4, 1_500, "kill", b"stop now"),  # not even JSON
            rec(3, 1_500, "kill", b'{"reason":"manual"}'),
        ],
    )
    assert [decode_command(c.verb, c.body.encode()).reason for c in placed] == ["manual"]  # type: ignore[union-attr]


def test_place_when_placed_twice_then_the_same_bytes() -> None:
    recorded = [rec(7, 1_500, "kill", b'{"reason":"manual","cancel_all":true}')]
    one, two = replay_control.place(WATERMARKS, recorded), replay_control.place(WATERMARKS, recorded)
    assert one == two
    other = replay_control.place(WATERMARKS, [rec(8, 1_500, "kill", b'{"reason":"manual","cancel_all":true}')])
    assert other[0].body != one[0].body  # the event id follows the recorded place


def test_due_commands_when_bars_go_by_then_each_command_is_due_once_before_the_bar_after_it() -> None:
    cmds = [
        ScheduledCommand(after=0, verb="kill", body="{}"),
        ScheduledCommand(after=2 * BAR, verb="resume", body="{}"),
        ScheduledCommand(after=2 * BAR, verb="cancel_all", body="{}"),
    ]
    assert [c.verb for c in handlers.due_commands(cmds, 0, 1 * BAR)] == ["kill"]
    assert handlers.due_commands(cmds, 1, 2 * BAR) == []  # placed after bar 2: not before it
    assert [c.verb for c in handlers.due_commands(cmds, 1, 3 * BAR)] == ["resume", "cancel_all"]
    assert handlers.due_commands(cmds, 3, 4 * BAR) == []


def test_load_control_when_written_then_read_back_and_bad_lines_named(tmp_path: Path) -> None:
    placed = replay_control.place(WATERMARKS, [rec(1, 1_500, "kill", b'{"reason":"manual"}')])
    good = tmp_path / "control.jsonl"
    replay_control.write(good, placed)
    assert feeds.load_control(good) == placed

    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(msgspec.json.encode(ScheduledCommand(after=0, verb="explode", body="{}")) + b"\n")
    with pytest.raises(ValueError, match="line 1"):
        feeds.load_control(bad)
    garbled = tmp_path / "garbled.jsonl"
    garbled.write_bytes(good.read_bytes() + b"{not json\n")
    with pytest.raises(ValueError, match="line 2"):
        feeds.load_control(garbled)
    unordered = tmp_path / "unordered.jsonl"
    unordered.write_bytes(
        b"".join(
            msgspec.json.encode(ScheduledCommand(after=a, verb="cancel_all", body="{}")) + b"\n" for a in (2 * BAR, BAR)
        )
    )
    with pytest.raises(ValueError, match="bar order"):
        feeds.load_control(unordered)


def test_md_config_when_a_control_file_is_given_to_another_feed_then_refused_naming_the_key() -> None:
    assert msgspec.convert({"feed": "file", "file_path": "b.parquet", "control_path": "c.jsonl"}, MdConfig)
    with pytest.raises(msgspec.ValidationError, match="KEEL_MD_CONTROL_PATH"):
        msgspec.convert({"feed": "synthetic", "control_path": "c.jsonl"}, MdConfig)
