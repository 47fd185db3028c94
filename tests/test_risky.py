"""``labbridge check-config`` names risky settings with a reason and what to do: it refuses (exit 2) a store
folder or file everyone may write and a private key everyone may read, and warns (exit 0) on the HTTP API
beyond loopback without authentication, TLS verification switched off and a store everyone may read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from labbridge.cli import main
from labbridge.config import load_config
from labbridge.risky import is_loopback, risky_settings

BASE = """
timezone = "Europe/Brussels"
[store]
path = "{store}"

[[sites]]
id = "arlon"
name = "Arlon"
"""


def _config(tmp_path: Path, extra: str = "", store: str = "data/labbridge.db") -> Path:
    (tmp_path / "data").mkdir(mode=0o750, exist_ok=True)
    path = tmp_path / "labbridge.toml"
    path.write_text(BASE.format(store=store) + extra)
    return path


def _check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(["check-config", str(path)])
    return rc, capsys.readouterr().err


def test_a_careful_config_has_no_risky_setting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _check(_config(tmp_path), capsys)
    assert (rc, err) == (0, "")


def test_a_store_folder_everyone_may_write_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _config(tmp_path)
    os.chmod(tmp_path / "data", 0o777)
    rc, err = _check(path, capsys)
    assert rc == 2
    assert "REFUSED: store.path: the store's folder" in err
    assert "writable by everyone (mode 777)" in err
    assert "do: chmod o-w" in err


def test_a_store_file_everyone_may_write_is_refused_and_one_they_may_read_is_warned(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _config(tmp_path)
    store = tmp_path / "data" / "labbridge.db"
    store.write_bytes(b"")
    os.chmod(store, 0o666)
    rc, err = _check(path, capsys)
    assert rc == 2
    assert "can alter results" in err
    os.chmod(store, 0o644)
    rc, err = _check(path, capsys)
    assert rc == 0
    assert "warning: store.path" in err
    assert "readable by everyone" in err


def test_a_private_key_everyone_may_read_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("node.crt", "node.key"):
        (tmp_path / name).write_text("-----BEGIN PRIVATE KEY-----\n")
    path = _config(tmp_path, """
[[instruments]]
id = "chem-1"
site = "arlon"
driver = "astm-generic"
transport = { kind = "tcp-server", port = 4001, tls = { cert = "node.crt", key = "node.key" } }
""")
    os.chmod(tmp_path / "node.key", 0o644)
    rc, err = _check(path, capsys)
    assert rc == 2
    assert "REFUSED: instruments[0].transport.tls.key: the private key" in err
    assert "do: chmod 600" in err
    os.chmod(tmp_path / "node.key", 0o640)
    assert _check(path, capsys) == (0, "")


def test_tls_verification_switched_off_is_warned(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _config(tmp_path, """
[[lis]]
id = "lis-http"
kind = "http"
url = "https://127.0.0.1:8443/results"
verify_tls = false

[[lis]]
id = "lis-mllp"
host = "127.0.0.1"
port = 2575
tls = { check_hostname = false }
""")
    rc, err = _check(path, capsys)
    assert rc == 0
    assert "warning: lis[0].verify_tls: TLS verification is off" in err
    assert "warning: lis[1].tls.check_hostname: TLS verification is off" in err


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7", "lab-node.example"])
def test_the_http_api_beyond_loopback_without_auth_is_warned(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            host: str) -> None:
    path = _config(tmp_path, f'\n[http]\nhost = "{host}"\n')
    config = load_config(path)
    risks = risky_settings(config)
    if getattr(config.http, "auth", None) in ("auto", "required"):  # with the auth of issue 18 merged
        assert risks == []
        return
    assert [(r.severity, r.key) for r in risks] in ([("warn", "http.host")], [("warn", "http.auth")])
    rc, err = _check(path, capsys)
    assert rc == 0
    assert "act as an operator" in err


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.0.1", "::1", "[::1]", "localhost"])
def test_loopback_addresses_are_recognised(host: str) -> None:
    assert is_loopback(host)


def test_a_trusted_bundle_key_everyone_may_write_is_refused(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = _config(tmp_path, '\n[bundles]\ntrusted_keys = ["it.pub"]\n')
    rc, err = _check(path, capsys)
    assert rc == 0
    assert "warning: bundles.trusted_keys[0]: the trusted key" in err
    assert "cannot be read" in err
    (tmp_path / "it.pub").write_text("-----BEGIN PUBLIC KEY-----\n")
    os.chmod(tmp_path / "it.pub", 0o666)
    rc, err = _check(path, capsys)
    assert rc == 2
    assert "REFUSED: bundles.trusted_keys[0]" in err
    assert "have their bundles accepted" in err
    os.chmod(tmp_path / "it.pub", 0o644)
    assert _check(path, capsys) == (0, "")
