"""Signed bundles between zones: a good bundle verifies and extracts; an altered, added or removed file, an
unknown signer, a forged manifest and every path traversal are refused with the reason, and nothing is written.

The bundles are made by ``labbridge bundle create`` and tampered with as an attacker would: by rewriting the
tar archive with Python's tarfile."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from labbridge import bundles
from labbridge.cli import main

Members = list[tuple[tarfile.TarInfo, bytes]]


@pytest.fixture
def lab(tmp_path: Path) -> dict[str, Path]:
    """A signing key pair, a config and a driver folder, and a bundle of them made by the CLI."""
    key = tmp_path / "keys" / "it.key"
    key.parent.mkdir()
    assert main(["bundle", "keygen", "--out", str(key)]) == 0
    src = tmp_path / "src"
    (src / "labbridge-driver-acme" / "acme" / "__pycache__").mkdir(parents=True)
    (src / "labbridge.toml").write_text('node = "arlon-1"\n')
    (src / "labbridge-driver-acme" / "pyproject.toml").write_text("[project]\nname = 'acme'\n")
    (src / "labbridge-driver-acme" / "acme" / "__init__.py").write_text("X = 1\n")
    (src / "labbridge-driver-acme" / "acme" / "__pycache__" / "x.pyc").write_bytes(b"\0\1")
    bundle = tmp_path / "b.tar"
    assert main(["bundle", "create", "--key", str(key), "--out", str(bundle),
                 str(src / "labbridge.toml"), str(src / "labbridge-driver-acme")]) == 0
    return {"key": key, "pub": key.with_name("it.key.pub"), "bundle": bundle, "src": src, "tmp": tmp_path}


def _members(bundle: Path) -> Members:
    with tarfile.open(bundle) as tar:
        out: Members = []
        for m in tar.getmembers():
            f = tar.extractfile(m) if m.isfile() else None
            out.append((m, f.read() if f else b""))
        return out


def _rewrite(bundle: Path, change: Callable[[Members], Members]) -> Path:
    members = change(_members(bundle))
    out = bundle.with_name("tampered.tar")
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return out


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _refusal(capsys: pytest.CaptureFixture[str], bundle: Path, pub: Path, dest: Path | None = None) -> str:
    """verify (and extract, when ``dest`` is given) exit 1; what they print on stderr."""
    capsys.readouterr()
    assert main(["bundle", "verify", str(bundle), "--trusted", str(pub)]) == 1
    err = capsys.readouterr().err
    assert "REFUSED" in err
    if dest is not None:
        assert main(["bundle", "extract", str(bundle), "--trusted", str(pub), "--to", str(dest)]) == 1
        assert not dest.exists() or not any(dest.rglob("*")), "nothing is written from a refused bundle"
    return err


def test_keygen_writes_a_private_key_only_its_owner_reads(lab: dict[str, Path]) -> None:
    assert stat.S_IMODE(lab["key"].stat().st_mode) == 0o600
    assert b"BEGIN PUBLIC KEY" in lab["pub"].read_bytes()
    assert main(["bundle", "keygen", "--out", str(lab["key"])]) == 1, "an existing key is never overwritten"


def test_a_good_bundle_verifies_and_extracts_the_same_bytes(lab: dict[str, Path],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["bundle", "verify", str(lab["bundle"]), "--trusted", str(lab["pub"])]) == 0
    out = capsys.readouterr().out
    assert "OK, signed by key" in out
    assert "labbridge-driver-acme/acme/__init__.py" in out
    dest = lab["tmp"] / "incoming"
    assert main(["bundle", "extract", str(lab["bundle"]), "--trusted", str(lab["pub"]), "--to", str(dest)]) == 0
    got = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert got == ["labbridge-driver-acme/acme/__init__.py", "labbridge-driver-acme/pyproject.toml",
                   "labbridge.toml"], "bytecode caches are not carried"
    assert (dest / "labbridge.toml").read_bytes() == (lab["src"] / "labbridge.toml").read_bytes()


def test_the_manifest_lists_names_sizes_hashes_time_and_signer(lab: dict[str, Path]) -> None:
    manifest = json.loads({m.name: d for m, d in _members(lab["bundle"])}["manifest.json"])
    assert manifest["format"] == "labbridge-bundle/1"
    assert manifest["created"].endswith("+00:00")
    public = bundles.load_public_keys([lab["pub"]])
    assert list(public) == [manifest["signer"]]
    toml = next(f for f in manifest["files"] if f["name"] == "labbridge.toml")
    assert toml["size"] == len('node = "arlon-1"\n')
    assert len(toml["sha256"]) == 64


def test_an_altered_file_is_refused(lab: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    tampered = _rewrite(lab["bundle"], lambda ms: [
        (m, b'node = "evil"\n' if m.name == "files/labbridge.toml" else d) for m, d in ms])
    err = _refusal(capsys, tampered, lab["pub"], lab["tmp"] / "out")
    assert "altered file: 'labbridge.toml'" in err


def test_an_added_file_is_refused(lab: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    tampered = _rewrite(lab["bundle"], lambda ms: [*ms, _file("files/labbridge-driver-acme/acme/evil.py", b"!")])
    err = _refusal(capsys, tampered, lab["pub"], lab["tmp"] / "out")
    assert "extra file: 'labbridge-driver-acme/acme/evil.py'" in err
    tampered = _rewrite(lab["bundle"], lambda ms: [*ms, _file("README", b"!")])
    assert "extra file: 'README'" in _refusal(capsys, tampered, lab["pub"])


def test_a_removed_file_is_refused(lab: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    tampered = _rewrite(lab["bundle"], lambda ms: [(m, d) for m, d in ms if m.name != "files/labbridge.toml"])
    err = _refusal(capsys, tampered, lab["pub"], lab["tmp"] / "out")
    assert "missing file: 'labbridge.toml'" in err


def test_a_bundle_signed_by_another_key_is_refused(lab: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    other = lab["tmp"] / "keys" / "other.key"
    assert main(["bundle", "keygen", "--out", str(other)]) == 0
    err = _refusal(capsys, lab["bundle"], other.with_name("other.key.pub"), lab["tmp"] / "out")
    assert "unknown signer" in err


def test_a_forged_manifest_is_refused_for_its_signature(lab: dict[str, Path],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """An attacker who alters a file and fixes the manifest to match cannot sign it."""
    evil = b'node = "evil"\n'

    def forge(ms: Members) -> Members:
        out: Members = []
        for m, d in ms:
            data = d
            if m.name == "manifest.json":
                manifest = json.loads(d)
                for f in manifest["files"]:
                    if f["name"] == "labbridge.toml":
                        f["size"], f["sha256"] = len(evil), hashlib.sha256(evil).hexdigest()
                data = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
            out.append((m, evil if m.name == "files/labbridge.toml" else data))
        return out

    err = _refusal(capsys, _rewrite(lab["bundle"], forge), lab["pub"], lab["tmp"] / "out")
    assert "bad signature" in err
    assert "altered file" not in err


@pytest.mark.parametrize(("name", "why"), [
    ("../evil.toml", "path leaves its folder"),
    ("files/../../evil.toml", "path leaves its folder"),
    ("/tmp/evil.toml", "absolute path"),
    ("files//etc/evil", "path leaves its folder"),
])
def test_path_traversal_in_the_archive_is_refused(lab: dict[str, Path], capsys: pytest.CaptureFixture[str],
                                                  name: str, why: str) -> None:
    tampered = _rewrite(lab["bundle"], lambda ms: [*ms, _file(name, b"owned")])
    err = _refusal(capsys, tampered, lab["pub"], lab["tmp"] / "out" / "inner")
    assert why in err
    assert not (lab["tmp"] / "evil.toml").exists()
    assert not Path("/tmp/evil.toml").exists()


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_links_in_the_archive_are_refused(lab: dict[str, Path], capsys: pytest.CaptureFixture[str],
                                          kind: bytes) -> None:
    def add_link(ms: Members) -> Members:
        info = tarfile.TarInfo("files/labbridge-driver-acme/link")
        info.type, info.linkname = kind, "/etc/passwd"
        return [*ms, (info, b"")]

    err = _refusal(capsys, _rewrite(lab["bundle"], add_link), lab["pub"], lab["tmp"] / "out")
    assert "a link (refused" in err


def test_a_trusted_signer_cannot_name_a_file_outside_the_destination(lab: dict[str, Path],
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Even a properly signed manifest may not name ``../x``: the key could have signed by mistake."""
    private = bundles.load_private_key(lab["key"])
    manifest = bundles.Manifest("2026-12-03T00:00:00+00:00", bundles.key_id(private.public_key()),
                                (bundles.FileEntry("../escape.toml", 2, hashlib.sha256(b"x\n")
                                                   .hexdigest()),))
    body = manifest.canonical()
    crafted = lab["tmp"] / "crafted.tar"
    with tarfile.open(crafted, "w") as tar:
        for info, data in (_file("manifest.json", body), _file("manifest.sig", private.sign(body)),
                           _file("files/../escape.toml", b"x\n")):
            tar.addfile(info, io.BytesIO(data))
    err = _refusal(capsys, crafted, lab["pub"], lab["tmp"] / "out")
    assert "manifest names '../escape.toml'" in err
    assert not (lab["tmp"] / "escape.toml").exists()


def test_create_refuses_symlinks_and_a_key_others_can_read(lab: dict[str, Path],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    link = lab["src"] / "labbridge-driver-acme" / "passwd"
    link.symlink_to("/etc/passwd")
    out = lab["tmp"] / "c.tar"
    assert main(["bundle", "create", "--key", str(lab["key"]), "--out", str(out),
                 str(lab["src"] / "labbridge-driver-acme")]) == 1
    assert "is a symlink" in capsys.readouterr().err
    link.unlink()
    os.chmod(lab["key"], 0o644)
    assert main(["bundle", "create", "--key", str(lab["key"]), "--out", str(out), str(lab["src"])]) == 1
    assert "readable by others" in capsys.readouterr().err
    assert not out.exists()


def test_extract_writes_only_into_a_new_or_empty_folder(lab: dict[str, Path],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    dest = lab["tmp"] / "etc"
    dest.mkdir()
    (dest / "labbridge.toml").write_text("current\n")
    assert main(["bundle", "extract", str(lab["bundle"]), "--trusted", str(lab["pub"]), "--to", str(dest)]) == 1
    assert "new or empty folder" in capsys.readouterr().err
    assert (dest / "labbridge.toml").read_text() == "current\n"


def test_not_a_tar_and_not_a_bundle_are_refused(lab: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    junk = lab["tmp"] / "junk.tar"
    junk.write_bytes(b"\x00garbage" * 100)
    assert "not a bundle" in _refusal(capsys, junk, lab["pub"])
    plain = _rewrite(lab["bundle"], lambda ms: [(m, d) for m, d in ms if m.name != "manifest.sig"])
    assert "not a signed labbridge bundle" in _refusal(capsys, plain, lab["pub"])


def test_trusted_key_files_may_hold_several_keys(tmp_path: Path) -> None:
    keys = [Ed25519PrivateKey.generate().public_key() for _ in range(2)]
    both = tmp_path / "trusted.pem"
    both.write_bytes(b"".join(bundles.public_pem(k) for k in keys))
    assert set(bundles.load_public_keys([both])) == {bundles.key_id(k) for k in keys}


def test_the_config_s_trusted_keys_verify_a_bundle(lab: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """``-c CONFIG`` trusts ``[bundles] trusted_keys`` (relative to the config's folder); no key at all is refused."""
    config = lab["tmp"] / "labbridge.toml"
    config.write_text('timezone = "UTC"\n[bundles]\ntrusted_keys = ["keys/it.key.pub"]\n')
    assert main(["bundle", "verify", str(lab["bundle"]), "-c", str(config)]) == 0
    dest = lab["tmp"] / "in"
    assert main(["bundle", "extract", str(lab["bundle"]), "-c", str(config), "--to", str(dest)]) == 0
    assert (dest / "labbridge.toml").exists()
    config.write_text('timezone = "UTC"\n')
    capsys.readouterr()
    assert main(["bundle", "verify", str(lab["bundle"]), "-c", str(config)]) == 1
    assert "no trusted key" in capsys.readouterr().err
