"""Driver link defaults: a family's [link] table is the default of its instruments; explicit keys win."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from labbridge.config import LinkConfig, parse_config, with_link_defaults
from labbridge.driver import driver_link_defaults, load_driver_class
from labbridge.driver_profile import ProfileError, load_profile
from labbridge.errors import ConfigError
from labbridge.replay import ReplayedMessage, replay, replay_capture


def _config(*instruments: dict[str, Any]) -> dict[str, Any]:
    return {"sites": [{"id": "arlon", "name": "Arlon"}],
            "instruments": [{"id": f"an-{i}", "site": "arlon",
                             "transport": {"kind": "tcp-server", "host": "127.0.0.1", "port": 0}, **inst}
                            for i, inst in enumerate(instruments)]}


def test_profile_dialect_becomes_the_drivers_link_defaults() -> None:
    assert load_driver_class("snibe-maglumi").link_defaults == {
        "framing": "e1381", "encoding": "latin-1", "frame_numbers": False, "checksums": False}
    # single_frame_message only documents the family: no LinkConfig key comes of it
    assert "single_frame_message" not in load_driver_class("roche-cobas").link_defaults
    assert load_driver_class("hl7-generic").link_defaults == {"framing": "mllp"}


def test_instrument_without_link_table_takes_its_drivers_defaults_and_explicit_keys_win() -> None:
    parsed = parse_config(_config({"driver": "snibe-maglumi"},
                                  {"driver": "snibe-maglumi", "link": {"checksums": True}},
                                  {"driver": "astm-generic"},
                                  {"driver": "hl7-generic"},
                                  {"driver": "hl7-generic", "link": {"framing": "e1381"}},
                                  {"driver": "no-such-driver"}))
    assert parsed.instruments[0].link == LinkConfig()  # parsing loads no driver: no defaults yet
    config = with_link_defaults(parsed, driver_link_defaults)
    assert with_link_defaults(config, driver_link_defaults) == config  # applying them twice changes nothing
    plain, explicit, generic, hl7, hl7_astm, unknown = (i.link for i in config.instruments)
    assert (plain.frame_numbers, plain.checksums, plain.framing) == (False, False, "e1381")
    assert (explicit.frame_numbers, explicit.checksums) == (False, True)
    assert (generic.frame_numbers, generic.checksums) == (True, True)
    assert hl7.framing == "mllp" and hl7_astm.framing == "e1381"
    assert unknown == generic  # an unknown driver adds nothing here; check-config names it


def test_instruments_sharing_a_listener_are_checked_on_their_merged_links() -> None:
    shared = {"transport": {"kind": "tcp-server", "host": "127.0.0.1", "port": 5100}}
    parsed = parse_config(_config({"driver": "snibe-maglumi", "listener_default": True, **shared},
                                  {"driver": "astm-generic", "sender": ["X"], **shared}))
    with pytest.raises(ConfigError, match=r"instruments\[1\]\.link: the same transport and link settings"):
        with_link_defaults(parsed, driver_link_defaults)


def test_a_driver_default_the_link_cannot_take_is_a_config_problem_naming_the_key() -> None:
    parsed = parse_config(_config({"driver": "odd"}))
    with pytest.raises(ConfigError, match=r"instruments\[0\]\.link\.framing"):
        with_link_defaults(parsed, lambda _name: {"framing": "smoke-signals"})


def test_check_config_shows_the_same_settings_the_daemon_gets(tmp_path: Path) -> None:
    path = tmp_path / "lab.toml"
    path.write_text('[[sites]]\nid = "arlon"\nname = "Arlon"\n\n[[instruments]]\nid = "maglumi-1"\nsite = "arlon"\n'
                    'driver = "snibe-maglumi"\ntransport = { kind = "tcp-server", host = "127.0.0.1", port = 0 }\n'
                    'link = { encoding = "cp1252", frame_numbers = "not a bool" }\n')
    proc = subprocess.run([sys.executable, "-m", "labbridge.cli", "check-config", str(path)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode != 0 and "instruments[0].link.frame_numbers" in proc.stderr
    # A MAGLUMI and a standard ASTM analyzer cannot share a port: their links differ once merged.
    path.write_text('[[sites]]\nid = "arlon"\nname = "Arlon"\n' + "".join(
        f'\n[[instruments]]\nid = "an-{n}"\nsite = "arlon"\ndriver = "{driver}"\n{extra}\n'
        'transport = { kind = "tcp-server", host = "127.0.0.1", port = 5100 }\n'
        for n, (driver, extra) in enumerate([("snibe-maglumi", "listener_default = true"),
                                             ("astm-generic", 'sender = ["X"]')])))
    proc = subprocess.run([sys.executable, "-m", "labbridge.cli", "check-config", str(path)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode != 0 and f"{path}: instruments[1].link: the same transport" in proc.stderr


def test_unknown_dialect_key_is_a_profile_error_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "profile.toml"
    path.write_text('[driver]\nname = "x"\nvendor = "X"\nmodels = ["X"]\n[link.dialect]\nframe_numbres = false\n')
    with pytest.raises(ProfileError, match="frame_numbres"):
        load_profile(path)


def test_replay_reads_a_capture_in_the_drivers_link_dialect() -> None:
    records = [b"H|\\^&|||MAGLUMI", b"P|1", b"O|1|S1||^^^TSH", b"R|1|^^^TSH|1.2|uIU/mL||||F", b"L|1|N"]
    capture = b"\x05" + b"".join(b"\x02" + r + b"\r\x03" for r in records) + b"\x04"
    [item] = list(replay(load_driver_class("snibe-maglumi")(), capture))
    assert isinstance(item, ReplayedMessage) and item.decoded is not None
    assert [r.value for r in item.decoded.results] == ["1.2"]
    # the same bytes are not standard LIS1-A frames: the generic driver's replay repairs them only out of
    # --strict, saying so (numbered in order, checksums computed), and decodes nothing under --strict
    generic = load_driver_class("astm-generic")()
    result = replay_capture(generic, capture)
    assert {(d.action, d.kind) for d in result.deviations} == {("repaired", "frame number missing"),
                                                               ("repaired", "checksum missing"),
                                                               ("repaired", "frame ending")}
    assert not any(isinstance(i, ReplayedMessage) for i in replay(generic, capture, strict=True))
