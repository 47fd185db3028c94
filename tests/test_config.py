from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from labbridge.config import load_config
from labbridge.errors import ConfigError

GOOD = """
[[sites]]
id = "arlon"
name = "Arlon"

[[instruments]]
id = "chem-1"
site = "arlon"
driver = "astm-generic"
transport = { kind = "tcp-server", port = 4001 }

[[instruments]]
id = "chem-2"
site = "arlon"
driver = "astm-generic"
transport = { kind = "tcp-client", host = "127.0.0.1", port = 5001 }

[[lis]]
id = "lis"
host = "127.0.0.1"
port = 2575
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "labbridge.toml"
    path.write_text(text)
    return path


def check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "labbridge.cli", "check-config", str(path)],
                          capture_output=True, text=True, check=False)


def test_good_config_passes_and_store_path_follows_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    proc = check(path)
    assert proc.returncode == 0, proc.stderr
    assert "OK" in proc.stdout
    assert load_config(path).store.path == str(tmp_path / "labbridge.db")


def test_shipped_configs_are_valid(repo: Path) -> None:
    for name in ("demo.toml", "example.toml"):
        proc = check(repo / "config" / name)
        assert proc.returncode == 0, proc.stderr
    demo = load_config(repo / "config" / "demo.toml")
    assert {s.name for s in demo.sites} == {"Arlon", "Libramont", "Marche", "Bastogne", "Bertrix", "Virton"}
    assert len(demo.instruments) >= 12


@pytest.mark.parametrize(("mutation", "key", "expected"), [
    (("port = 5001", "port = 70000"), "instruments[1].transport.port", "less than or equal to 65535"),
    (('site = "arlon"\ndriver = "astm-generic"\ntransport = { kind = "tcp-client"',
      'site = "nowhere"\ndriver = "astm-generic"\ntransport = { kind = "tcp-client"'),
     "instruments[1].site", "a site id from [[sites]]"),
    (('id = "lis"', 'id = "lis"\ncolour = "blue"'), "lis[0].colour", "unknown key"),
    (('transport = { kind = "tcp-server", port = 4001 }', 'transport = { kind = "carrier-pigeon" }'),
     "instruments[0].transport", "tcp-server"),
    (('id = "chem-2"', 'id = "chem-1"'), "instruments[1].id", "duplicate id"),
    (('driver = "astm-generic"\ntransport = { kind = "tcp-server"', 'driver = "no-such-driver"\n'
      'transport = { kind = "tcp-server"'), "instruments[0].driver", "a known driver"),
])
def test_bad_config_names_file_key_path_and_expectation(tmp_path: Path, mutation: tuple[str, str], key: str,
                                                        expected: str) -> None:
    assert mutation[0] in GOOD
    path = write(tmp_path, GOOD.replace(*mutation))
    proc = check(path)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if key in line]
    assert lines, proc.stderr
    assert str(path) in lines[0] and expected in lines[0], lines[0]


def test_toml_syntax_error_is_reported_with_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[[sites]\nid=")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "not valid TOML" in str(info.value) and str(path) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    proc = check(tmp_path / "absent.toml")
    assert proc.returncode != 0 and "file not found" in proc.stderr


def test_hl7_link_tls_paths_follow_the_file_and_a_tls_listener_needs_cert_and_key(tmp_path: Path) -> None:
    hl7 = GOOD + """
[[instruments]]
id = "hl7-1"
site = "arlon"
driver = "hl7-generic"
transport = { kind = "tcp-server", port = 4002, tls = { cert = "tls/c.pem", key = "tls/k.pem" } }
link = { framing = "mllp" }
"""
    config = load_config(write(tmp_path, hl7 + '\n[lis.tls]\nca = "ca.pem"\nserver_hostname = "lis"\n'))
    tls = config.instruments[2].transport.tls
    assert tls is not None and tls.cert == str(tmp_path / "tls" / "c.pem")
    assert config.lis[0].tls is not None and config.lis[0].tls.ca == str(tmp_path / "ca.pem")
    proc = check(write(tmp_path, hl7.replace(', key = "tls/k.pem"', "")))
    assert proc.returncode != 0
    assert "instruments[2].transport.tls: a listening TLS link needs both cert and key" in proc.stderr
    proc = check(write(tmp_path, hl7.replace('framing = "mllp"', 'framing = "hl7"')))
    assert "instruments[2].link.framing" in proc.stderr


def test_link_dialect_flags_reach_the_link_profile(tmp_path: Path) -> None:
    from labbridge.links.dialect import link_profile

    text = GOOD.replace('transport = { kind = "tcp-server", port = 4001 }',
                        'transport = { kind = "tcp-server", port = 4001 }\n'
                        'link = { frame_numbers = false, checksums = false, record_terminator = "crlf", '
                        'lenient_whitespace = true, enq_eot_keepalive = true }')
    cfg = load_config(write(tmp_path, text))
    profile = link_profile(cfg.instruments[0].link)
    assert (profile.frame_numbers, profile.checksums, profile.record_terminator) == (False, False, b"\r\n")
    assert profile.lenient_whitespace and profile.enq_eot_keepalive
    assert link_profile(cfg.instruments[1].link) == link_profile(type(cfg.instruments[1].link)())


def test_unknown_record_terminator_names_the_key(tmp_path: Path) -> None:
    text = GOOD.replace('transport = { kind = "tcp-server", port = 4001 }',
                        'transport = { kind = "tcp-server", port = 4001 }\nlink = { record_terminator = "nl" }')
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert info.value.problems[0][0] == "instruments[0].link.record_terminator"


def test_serial_transport_is_validated_and_a_port_used_twice_is_refused(tmp_path: Path) -> None:
    serial = 'transport = { kind = "serial", port = "/dev/ttyS0", baudrate = 9600, bytesize = 7, parity = "E", ' \
             'stopbits = 2, xonxoff = true }'
    text = GOOD.replace('transport = { kind = "tcp-server", port = 4001 }', serial)
    cfg = load_config(write(tmp_path, text))
    t = cfg.instruments[0].transport
    assert (t.kind, t.bytesize, t.parity, t.stopbits, t.xonxoff) == ("serial", 7, "E", 2, True)
    bad = GOOD.replace('transport = { kind = "tcp-server", port = 4001 }',
                       'transport = { kind = "serial", port = "/dev/ttyS0", stopbits = 3, parity = "X" }')
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, bad))
    keys = {key for key, _ in info.value.problems}
    assert keys == {"instruments[0].transport.stopbits", "instruments[0].transport.parity"}
    twice = GOOD.replace('transport = { kind = "tcp-server", port = 4001 }', serial) \
                .replace('transport = { kind = "tcp-client", host = "127.0.0.1", port = 5001 }', serial)
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, twice))
    assert info.value.problems[0][0] == "instruments[1].transport.port"


def test_instruments_without_a_zone_take_the_nodes_and_check_config_says_who(tmp_path: Path) -> None:
    own = GOOD.replace('id = "chem-2"\n', 'id = "chem-2"\ntimezone = "Asia/Tokyo"\n')
    text = 'timezone = "Europe/Brussels"\n' + own
    config = load_config(write(tmp_path, text))
    zones = {i.id: (i.timezone, i.timezone_from_node) for i in config.instruments}
    assert zones == {"chem-1": ("Europe/Brussels", True), "chem-2": ("Asia/Tokyo", False)}
    assert not config.timezone_from_machine
    out = check(write(tmp_path, text)).stdout
    assert "time zone Europe/Brussels (from the config); instruments without their own: chem-1" in out
    assert "chem-2" not in out.split("time zone", 1)[1]


def test_without_a_node_zone_the_machines_is_used_and_said_never_a_citys(tmp_path: Path) -> None:
    from labbridge.config import machine_timezone

    config = load_config(write(tmp_path, GOOD))
    assert config.timezone == machine_timezone() and config.timezone_from_machine
    assert all(i.timezone == config.timezone and i.timezone_from_node for i in config.instruments)
    assert "from this machine's zone: set `timezone` in the config" in check(write(tmp_path, GOOD)).stdout


def test_an_unknown_node_zone_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, 'timezone = "Europe/Atlantis"\n' + GOOD))
    assert caught.value.problems[0][0] == "timezone" and "Europe/Atlantis" in caught.value.problems[0][1]


FIVE_MISTAKES = """
[[sites]]
id = "arlon"
name = "Arlon"

[[instruments]]
id = "chem-1"
site = "arlon"
driver = "sysmx-xn"
transport = { kind = "tcp-server", prot = 4001 }

[[instruments]]
id = "chem-1"
site = "arlonn"
driver = "astm-generic"
idle_after_s = "600"
transport = { kind = "tcp-server", port = 4002 }

[[instruments]]
id = "chem-3"
site = "arlon"
driver = "astm-generic"
enabeld = true
transport = { kind = "tcp-client", host = "127.0.0.1", port = "5001" }

[[lis]]
id = "lis"
host = "127.0.0.1"
port = 2575
"""


def test_check_config_reports_every_problem_in_one_pass_with_suggestions(tmp_path: Path) -> None:
    """Validation errors, cross-checks (duplicate ids, unknown site) and driver names, all in one run, in the
    order of the file; a mistyped key, driver or site gets the nearest right one; text is not a number."""
    proc = check(write(tmp_path, FIVE_MISTAKES))
    assert proc.returncode == 2
    lines = [tuple(line.split(": ", 2)[1:]) for line in proc.stderr.splitlines()[1:]]
    assert [key for key, _ in lines] == [
        "instruments[0].driver", "instruments[0].transport.port", "instruments[0].transport.prot",
        "instruments[1].id", "instruments[1].idle_after_s", "instruments[1].site",
        "instruments[2].enabeld", "instruments[2].transport.port"]
    said = dict(lines)
    assert said["instruments[0].driver"].endswith("got 'sysmx-xn' (did you mean `sysmex-xn`?)")
    assert said["instruments[0].transport.prot"].endswith("(did you mean `port`?)")
    assert said["instruments[1].id"] == "duplicate id 'chem-1' (already used by instruments[0])"
    assert "a number, not text" in said["instruments[1].idle_after_s"]
    assert said["instruments[1].site"].endswith("(did you mean `arlon`?)")
    assert said["instruments[2].enabeld"].endswith("(did you mean `enabled`?)")
    assert "a number, not text" in said["instruments[2].transport.port"]
    assert "(8 problem(s))" in proc.stderr.splitlines()[0]


@pytest.mark.parametrize(("line", "key"), [
    ('idle_after_s = "600"', "instruments[0].idle_after_s"),
    ('enabled = "yes"', "instruments[0].enabled"),
    ('link = { reply_timeout_s = "15" }', "instruments[0].link.reply_timeout_s"),
])
def test_text_where_a_number_or_boolean_is_needed_is_refused(tmp_path: Path, line: str, key: str) -> None:
    text = GOOD.replace('driver = "astm-generic"\ntransport = { kind = "tcp-server"',
                        f'driver = "astm-generic"\n{line}\ntransport = {{ kind = "tcp-server"', 1)
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert [k for k, _ in err.value.problems] == [key]


def test_suggested_keys_follow_the_table_they_are_in() -> None:
    from labbridge.config import keys_at

    assert "port" in keys_at(("instruments", 0, "transport", "tcp-server"))
    assert "baudrate" in keys_at(("instruments", 0, "transport", "serial"))
    assert "baudrate" not in keys_at(("instruments", 0, "transport", "tcp-server"))
    assert "units" in keys_at(("instruments", 0, "tests", "GLU"))
    assert "message_type" in keys_at(("lis", 0, "mllp"))
    assert keys_at(("nowhere",)) == set()
    assert "path" in keys_at(("store", "serial"))  # a key named like a tag where no union is (found by fuzzing)


# ---- issue 20: what the LIS receives (QC per destination, PID policy, coding system) ---------------------

def test_lis_destinations_default_to_qc_held_null_pid_fields_and_local_codes(tmp_path: Path) -> None:
    lis = load_config(write(tmp_path, GOOD)).lis[0]
    assert (lis.qc, lis.results, lis.coding_system) == ("hold", "all", "L")
    assert (lis.missing_patient_fields, lis.pid_without_patient) == ("null", "omit")
    assert (lis.route().qc, lis.route().results) == ("hold", "all")


def test_a_qc_feed_sends_its_qc_marked_and_refuses_to_drop_it(tmp_path: Path) -> None:
    feed = GOOD + '\n[[lis]]\nid = "qc"\nkind = "http"\nurl = "http://127.0.0.1:9/qc"\nresults = "qc"\n'
    assert load_config(write(tmp_path, feed)).lis[1].qc == "send-marked"
    with pytest.raises(ConfigError, match='qc = "drop" sends none'):
        load_config(write(tmp_path, feed + 'qc = "drop"\n'))
    with pytest.raises(ConfigError, match="lis"):
        load_config(write(tmp_path, GOOD + 'qc = "later"\n'))
    with pytest.raises(ConfigError, match="coding_system"):
        load_config(write(tmp_path, GOOD + 'coding_system = "L N"\n'))


def test_docs_config_md_is_generated_from_the_models_and_every_key_says_what_it_means(repo: Path) -> None:
    """docs/config.md cannot drift: it is labbridge.config_docs' output, and every key has a description."""
    from labbridge.config_docs import generate, undocumented

    assert undocumented() == []
    shipped = (repo / "docs" / "config.md").read_text(encoding="utf-8")
    assert shipped == generate(), "docs/config.md is stale: python -m labbridge.config_docs > docs/config.md"
    for key in ("allow_peers", "test_code_component", "qc", "auth", "url", "show_patient_identifiers"):
        assert f"| `{key}` |" in shipped
