"""The link health judge with an explicit ``now``: states, reasons, expected traffic (configured, learned)."""

from __future__ import annotations

import zoneinfo
from datetime import UTC, datetime

import pytest
from structlog.testing import capture_logs

from labbridge.config import ConfigError, parse_config
from labbridge.health.instrument import RECENT_FRAMES, InstrumentHealth, StoreFacts
from labbridge.health.traffic import LEARNED_FLOOR_S, ConfiguredTraffic, Window, learn, parse_days, parse_hours
from labbridge.links.health_settings import configured_traffic

BRUSSELS = zoneinfo.ZoneInfo("Europe/Brussels")
# Monday 2026-11-30 09:00 in Brussels (UTC+1).
MONDAY_9 = datetime(2026, 11, 30, 9, 0, tzinfo=BRUSSELS).timestamp()


def _health(**kwargs: object) -> InstrumentHealth:
    base: dict[str, object] = {"id": "an-1", "site": "arlon", "driver": "astm-generic",
                               "transport": "tcp-server 127.0.0.1:4001", "timezone": "Europe/Brussels",
                               "framing": "e1381", "started_at": MONDAY_9 - 86400}
    base.update(kwargs)
    return InstrumentHealth(**base)  # type: ignore[arg-type]


def test_a_clean_close_after_a_transmission_is_idle_waiting_not_down() -> None:
    h = _health()
    h.connected("10.1.2.3:5000", now=MONDAY_9)
    h.message_counted(now=MONDAY_9 + 10)
    h.connection_ended(clean=True, reason="unused", now=MONDAY_9 + 11)
    state, reason = h.effective_state(MONDAY_9 + 60)
    assert state == "idle"
    assert reason.startswith("waiting for the next transmission") and "09:00" in reason
    assert h.to_json(MONDAY_9 + 60)["last_disconnect_clean"] is True


def test_a_connection_lost_mid_transfer_is_down_with_its_reason() -> None:
    h = _health()
    h.connected("10.1.2.3:5000", now=MONDAY_9)
    h.connection_ended(clean=False, reason="connection lost at 09:00 in the middle of a transfer", now=MONDAY_9)
    assert h.effective_state(MONDAY_9 + 60) == ("down", "connection lost at 09:00 in the middle of a transfer")
    data = h.to_json(MONDAY_9 + 60)
    assert data["last_disconnect_clean"] is False and data["connected_since"] is None
    assert data["last_disconnect_at"] is not None


def test_silence_against_configured_windows() -> None:
    mornings = Window(parse_days("mon-fri"), 7 * 60, 12 * 60, 300, "mon-fri 07:00-12:00")
    h = _health(expected=ConfiguredTraffic((mornings,)))
    h.connected("10.1.2.3:5000", now=MONDAY_9 - 3600)
    h.message_counted(now=MONDAY_9)
    assert h.effective_state(MONDAY_9 + 240)[0] == "up"
    state, reason = h.effective_state(MONDAY_9 + 45 * 60)
    assert state == "idle"
    assert reason.startswith("connected, no message for 45 min while this analyzer usually sends every 5 min "
                             "on mon-fri 07:00-12:00")
    # Outside the window nothing is expected: 13:00 the same day is not judged.
    assert h.effective_state(MONDAY_9 + 4 * 3600)[0] == "up"
    # The window's first minutes are not judged against the evening before: silence counts from 07:00.
    h2 = _health(expected=h.expected)
    h2.connected("x", now=MONDAY_9 - 6 * 3600)
    h2.message_counted(now=MONDAY_9 - 14 * 3600)  # Sunday 19:00
    assert h2.effective_state(MONDAY_9 - 2 * 3600 + 120)[0] == "up"  # 07:02
    assert h2.effective_state(MONDAY_9 - 2 * 3600 + 400)[0] == "idle"  # 07:06


def test_a_per_transmission_analyzer_silent_too_long_says_so() -> None:
    h = _health(expected=ConfiguredTraffic.every(300))
    h.connected("x", now=MONDAY_9)
    h.message_counted(now=MONDAY_9)
    h.connection_ended(clean=True, reason="", now=MONDAY_9 + 1)
    assert h.effective_state(MONDAY_9 + 200)[1].startswith("waiting for the next transmission (")
    state, reason = h.effective_state(MONDAY_9 + 3600)
    assert state == "idle" and "no message for 60 min" in reason and "every 5 min" in reason


def test_learned_traffic_per_hour_of_the_week() -> None:
    until = MONDAY_9 + 7 * 86400 * 3 + 1800  # Monday 09:30, three weeks later
    first = MONDAY_9 - 3600
    gaps: list[tuple[int, float]] = []
    for week in range(4):
        monday_8 = MONDAY_9 - 3600 + week * 7 * 86400
        gaps.append((int(monday_8 // 3600), 240.0 + week * 10))  # Monday 08-09: every ~4-5 min
        gaps.append((int((monday_8 + 3600) // 3600), 300.0))  # Monday 09-10: every 5 min
        if week == 0:
            gaps.append((int((monday_8 + 6 * 3600) // 3600), 60.0))  # Monday 14-15: once, then quiet
    learned = learn(gaps, first_at=first, until=until, tz=BRUSSELS, weeks=4)
    assert learned.gaps[9] == 300.0  # Monday 09:00-10:00
    assert learned.gaps[8] == 260.0  # the upper median of 240, 250, 260, 270
    assert learned.gaps[14] is None  # one week of four: nothing expected
    assert learned.gaps[24 + 9] is None  # Tuesday mornings: never a message
    h = _health(learned=learned)
    h.connected("x", now=until - 7200)
    h.message_counted(now=until - 2700)
    state, reason = h.effective_state(until)
    assert state == "idle"
    assert "no message for 45 min while this analyzer usually sends at least every 5 min on Mondays 09:00-10:00" \
        in reason and "learned" in reason
    assert h.to_json(until)["expected_every_s"] == 300.0
    assert h.effective_state(until - 2700 + 300)[0] == "up"  # within 1.5 times the usual gap (08:00-09:00)


def test_bytes_that_never_frame_degrade_naming_the_line_settings() -> None:
    h = _health(transport="serial /dev/ttyUSB0 9600 8N1", undecoded_after_s=60)
    h.connected("/dev/ttyUSB0", now=MONDAY_9)
    h.counters.bytes_received += 500
    assert h.effective_state(MONDAY_9 + 30)[0] == "up"
    state, reason = h.effective_state(MONDAY_9 + 90)
    assert state == "degraded" and "500 bytes" in reason and "baud rate, parity" in reason
    h.decoded(now=MONDAY_9 + 100)  # a frame: the line speaks ASTM
    assert h.effective_state(MONDAY_9 + 200)[0] == "up"


def test_naks_timeouts_backlog_and_dead_letters_degrade_with_what_to_check() -> None:
    h = _health(idle_after_s=86400)
    h.connected("x", now=MONDAY_9)
    h.message_counted(now=MONDAY_9)
    for i in range(3):
        h.count_nak_received(now=MONDAY_9 + i)
    state, reason = h.effective_state(MONDAY_9 + 10)
    assert state == "degraded" and "rejected 3 of labbridge's frames" in reason and "cable" in reason
    assert h.effective_state(MONDAY_9 + 2000)[0] == "up"  # out of the window
    for i in range(3):
        h.count_timeout(now=MONDAY_9 + 2000 + i)
    assert "3 transfers timed out" in h.effective_state(MONDAY_9 + 2010)[1]
    h2 = _health(lis_backlog_after_s=600)
    h2.connected("x", now=MONDAY_9)
    h2.store = StoreFacts(pending_items=4, pending_results=20, oldest_pending_at=MONDAY_9 - 1500)
    state, reason = h2.effective_state(MONDAY_9)
    assert state == "degraded" and "20 results of this analyzer waiting for the LIS for 25 min" in reason
    assert "LIS destination" in reason
    h2.store = StoreFacts(dead=(("unmapped", 2),))
    state, reason = h2.effective_state(MONDAY_9)
    assert state == "degraded" and "2 dead letters (unmapped 2)" in reason and "outbox list" in reason


def test_reject_ratio_degrades() -> None:
    h = _health()
    h.connected("x", now=MONDAY_9)
    for _ in range(10):
        h.frame_outcome(False)
    state, reason = h.effective_state(MONDAY_9 + 1)
    assert state == "degraded" and "frames rejected" in reason and "baud rate" in reason


def test_reject_ratio_is_over_the_last_frames_only() -> None:
    """The ratio looks at the last RECENT_FRAMES outcomes whatever is held between trims, and what is held
    stays bounded."""
    h = _health()
    for _ in range(RECENT_FRAMES):
        h.frame_outcome(False, MONDAY_9)
    for n in range(1, 3 * RECENT_FRAMES):
        h.frame_outcome(True, MONDAY_9)
        assert h.reject_ratio() == max(0, RECENT_FRAMES - n) / RECENT_FRAMES
        assert len(h._recent) <= 2 * RECENT_FRAMES
    assert h.last_frame_at == MONDAY_9


def test_changes_log_once_warning_to_down_info_on_recovery() -> None:
    h = _health()
    with capture_logs() as logs:
        h.connected("x")
        h.connection_ended(clean=False, reason="connection lost at 09:00; listening")
        h.connection_ended(clean=False, reason="connection lost at 09:00; listening")
        h.connected("x")
    events = [(e["log_level"], e["state"]) for e in logs if e["event"] == "link_state"]
    assert events == [("info", "up"), ("warning", "down"), ("info", "up")]  # from "connecting"


def test_windows_parse_and_validate() -> None:
    assert parse_days("fri-mon") == frozenset({4, 5, 6, 0})
    assert parse_hours("22:00-06:00") == (22 * 60, 6 * 60)
    night = Window(parse_days("mon"), 22 * 60, 6 * 60, 600, "mon 22:00-06:00")
    assert ConfiguredTraffic((night,)).at(MONDAY_9 + 19 * 3600, BRUSSELS) is not None  # Tuesday 04:00
    assert ConfiguredTraffic((night,)).at(MONDAY_9 + 43 * 3600, BRUSSELS) is None  # Wednesday 04:00
    base = {"store": {"path": "x.db"}, "sites": [{"id": "s", "name": "S"}]}
    inst = {"id": "a", "site": "s", "driver": "astm-generic", "transport": {"kind": "tcp-server", "port": 0}}
    cfg = parse_config({**base, "instruments": [{**inst, "expect_message_every": [
        {"days": "mon-fri", "hours": "07:00-19:00", "every_s": 300}]}]})
    traffic = configured_traffic(cfg.instruments[0])
    assert traffic is not None and traffic.windows[0].label == "mon-fri 07:00-19:00"
    plain = parse_config({**base, "instruments": [{**inst, "expect_message_every": 600}]})
    assert configured_traffic(plain.instruments[0]) == ConfiguredTraffic.every(600)
    with pytest.raises(ConfigError) as err:
        parse_config({**base, "instruments": [{**inst, "expect_message_every": [
            {"days": "weekdays", "hours": "7-19", "every_s": 300}]}]})
    assert "instruments[0].expect_message_every" in str(err.value) and "mon-fri" in str(err.value)


def test_a_learned_burst_is_no_promise_of_messages_seconds_apart() -> None:
    """Learned from busy hours (messages 2 s apart on the last two Mondays), silence is judged only after
    LEARNED_FLOOR_S, not after 3 s."""
    now = datetime(2026, 12, 7, 10, 30, tzinfo=UTC).timestamp()  # a Monday
    hour = int(now // 3600)
    week = 24 * 7
    learned = learn([(hour - week, 2.0), (hour - 2 * week, 2.0)], first_at=(hour - 2 * week) * 3600, until=now,
                    tz=UTC, weeks=4)
    expected = learned.at(now, UTC)
    assert expected is not None and expected.every_s == 2.0
    assert expected.allowed_s == LEARNED_FLOOR_S
