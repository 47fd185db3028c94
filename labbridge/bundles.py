"""Signed bundles: config files and driver wheels or folders carried into a clean zone, refused if altered.

A bundle is an uncompressed tar archive holding exactly:

* ``manifest.json``: the canonical JSON (sorted keys, no spaces, UTF-8) of ``format``, ``created`` (UTC,
  ISO 8601), ``signer`` (the key id) and ``files``: one ``{"name", "size", "sha256"}`` per file, sorted by name;
* ``manifest.sig``: the Ed25519 signature (64 raw bytes) of ``manifest.json``'s bytes;
* ``files/NAME`` for each file the manifest lists.

:func:`verify` accepts a bundle only if every one of these holds, and names each one that does not: the
signer is one of the trusted keys, the signature is good over the manifest as stored, the manifest is in its
canonical form, every member is a regular file with a safe relative name (no ``..``, no absolute path, no
symlink, link or device, no duplicate), no file is missing or extra, and every file has the size and SHA-256
the manifest gives. :func:`extract` verifies first, then writes the files with the same checks again on the
bytes it writes (an archive changed between the two is refused), into a folder it creates.

A key id is the first 16 hex digits of the SHA-256 of the raw 32-byte public key. Private keys are PKCS#8
PEM files written with mode 0600; public keys are SubjectPublicKeyInfo PEM files (``openssl pkey -pubin``
reads both).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from labbridge.errors import LabbridgeError

FORMAT = "labbridge-bundle/1"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
FILES = "files/"
MAX_MANIFEST_BYTES = 1 << 20
MAX_NAME_LENGTH = 255
_CHUNK = 1 << 16
TrustedKeys = dict[str, Ed25519PublicKey]  # by key id
_SKIPPED_DIRS = frozenset({"__pycache__"})  # bytecode the interpreter writes: not part of what is carried


class BundleError(LabbridgeError):
    """A bundle (or a key) cannot be used; ``problems`` names each reason, one line each."""

    def __init__(self, what: str, problems: list[str]) -> None:
        self.what = what
        self.problems = problems
        super().__init__(f"{what}: " + "; ".join(problems))


@dataclasses.dataclass(frozen=True)
class FileEntry:
    name: str
    size: int
    sha256: str


@dataclasses.dataclass(frozen=True)
class Manifest:
    created: str
    signer: str
    files: tuple[FileEntry, ...]

    def canonical(self) -> bytes:
        """The exact bytes that are signed."""
        body = {"format": FORMAT, "created": self.created, "signer": self.signer,
                "files": [dataclasses.asdict(f) for f in self.files]}
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# -- keys --------------------------------------------------------------------------------------------------

def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_pem(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def keygen(private_path: Path, public_path: Path) -> Ed25519PublicKey:
    """A new Ed25519 key pair: the private key to ``private_path`` (created, mode 0600, never overwritten),
    the public key to ``public_path`` (0644)."""
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    _write_new(private_path, pem, 0o600)
    try:
        _write_new(public_path, public_pem(private.public_key()), 0o644)
    except OSError:
        private_path.unlink()
        raise
    return private.public_key()


def _write_new(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.chmod(path, mode)  # the umask may have narrowed a public key's mode


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The signing key; refused when anyone but its owner may read it."""
    mode = path.stat().st_mode
    if mode & 0o077:
        raise BundleError(str(path), [f"private key is readable by others (mode {mode & 0o777:o}): chmod 600 it"])
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError(str(path), ["not an Ed25519 private key"])
    return key


def load_public_keys(paths: Iterable[Path]) -> TrustedKeys:
    """Trusted keys by key id, from PEM files (each may hold several keys, one after another)."""
    keys: TrustedKeys = {}
    for path in paths:
        text = path.read_bytes()
        blocks = [b"-----BEGIN PUBLIC KEY-----" + part for part in text.split(b"-----BEGIN PUBLIC KEY-----")[1:]]
        if not blocks:
            raise BundleError(str(path), ["no PEM public key in the file"])
        for block in blocks:
            try:
                key = serialization.load_pem_public_key(block)
            except ValueError as exc:
                raise BundleError(str(path), [f"not a readable public key: {exc}"]) from None
            if not isinstance(key, Ed25519PublicKey):
                raise BundleError(str(path), ["not an Ed25519 public key"])
            keys[key_id(key)] = key
    return keys


# -- create ------------------------------------------------------------------------------------------------

def collect(paths: Iterable[Path]) -> list[tuple[str, Path]]:
    """(name in the bundle, file) for each file and each file under each folder, by name.

    A file is named by its own name, a folder's files by the folder's name and their path inside it.
    Symlinks are refused (what they point at is not what was reviewed), as are two files of the same name.
    """
    found: dict[str, Path] = {}
    for path in paths:
        if path.is_symlink():
            raise BundleError(str(path), ["is a symlink: give the file it points to"])
        if path.is_dir():
            items = [(f"{path.name}/{f.relative_to(path).as_posix()}", f) for f in _walk(path)]
        elif path.is_file():
            items = [(path.name, path)]
        else:
            raise BundleError(str(path), ["not a file or folder"])
        for name, file in items:
            if name in found:
                raise BundleError(str(file), [f"two files would be named {name!r} in the bundle"])
            if why := _check_name(name):
                raise BundleError(str(file), [f"cannot be named {name!r} in a bundle: {why}"])
            found[name] = file
    if not found:
        raise BundleError("bundle", ["no files to put in it"])
    return sorted(found.items())


def _walk(folder: Path) -> Iterator[Path]:
    for entry in sorted(folder.iterdir()):
        if entry.is_symlink():
            raise BundleError(str(entry), ["is a symlink: bundles carry regular files only"])
        if entry.is_dir():
            if entry.name not in _SKIPPED_DIRS:
                yield from _walk(entry)
        elif entry.is_file():
            yield entry
        else:
            raise BundleError(str(entry), ["not a regular file"])


def create(private: Ed25519PrivateKey, paths: Iterable[Path], out: Path, now: datetime | None = None) -> Manifest:
    """Write a signed bundle of ``paths`` to ``out`` (created; never overwritten)."""
    items = collect(paths)
    entries = tuple(FileEntry(name, file.stat().st_size, _sha256_file(file)) for name, file in items)
    created = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0).isoformat()
    manifest = Manifest(created, key_id(private.public_key()), entries)
    body = manifest.canonical()
    signature = private.sign(body)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, MANIFEST, body)
        _add_bytes(tar, SIGNATURE, signature)
        for entry, (_, file) in zip(entries, items, strict=True):
            data = file.read_bytes()
            if hashlib.sha256(data).hexdigest() != entry.sha256:
                raise BundleError(str(file), ["changed while the bundle was being made"])
            _add_bytes(tar, FILES + entry.name, data)
        raw.flush()
        os.fsync(raw.fileno())
    return manifest


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# -- verify and extract ------------------------------------------------------------------------------------

def _check_name(name: str) -> str | None:
    """Why ``name`` is not a safe relative file name (None when it is)."""
    path = PurePosixPath(name)
    if not name or len(name) > 4096 or "\\" in name or "\x00" in name:
        return "not a plain relative name"
    if path.is_absolute() or name.startswith("/"):
        return "absolute path"
    if any(part in ("", ".", "..") for part in name.split("/")):
        return "path leaves its folder ('..' or empty part)"
    if any(len(part) > MAX_NAME_LENGTH for part in path.parts):
        return "a name part is too long"
    return None


def _member_problem(member: tarfile.TarInfo) -> str | None:
    if member.issym() or member.islnk():
        return f"{member.name!r}: a link (refused: bundles carry regular files only)"
    if not member.isfile():
        return f"{member.name!r}: not a regular file (refused)"
    why = _check_name(member.name)
    return f"{member.name!r}: {why} (refused)" if why else None


def _parse_manifest(body: bytes) -> tuple[Manifest | None, list[str]]:
    try:
        data: Any = json.loads(body.decode("utf-8"))
        files = tuple(FileEntry(str(f["name"]), int(f["size"]), str(f["sha256"])) for f in data["files"])
        manifest = Manifest(str(data["created"]), str(data["signer"]), files)
        fmt = data["format"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        return None, [f"manifest unreadable: {exc}"]
    problems = [] if fmt == FORMAT else [f"manifest format {fmt!r} is not {FORMAT!r}"]
    if manifest.canonical() != body:
        problems.append("manifest is not in canonical form (re-encoded or edited)")
    names = [f.name for f in files]
    if len(set(names)) != len(names):
        problems.append("manifest lists a file twice")
    problems += [f"manifest names {f.name!r}: {why}" for f in files if (why := _check_name(f.name))]
    return manifest, problems


def _read_small(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    if member.size > MAX_MANIFEST_BYTES:
        raise BundleError(member.name, ["too large"])
    stream = tar.extractfile(member)
    assert stream is not None  # a regular file (checked by _member_problem)
    return stream.read()


def _digest(stream: IO[bytes], sink: IO[bytes] | None = None) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    while chunk := stream.read(_CHUNK):
        digest.update(chunk)
        size += len(chunk)
        if sink is not None:
            sink.write(chunk)
    return size, digest.hexdigest()


def _open(bundle: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(bundle, mode="r:")
    except (tarfile.TarError, EOFError) as exc:
        raise BundleError(str(bundle), [f"not a bundle (tar archive): {exc}"]) from None


def verify(bundle: Path, trusted: TrustedKeys) -> Manifest:
    """The bundle's manifest if every check holds; else :class:`BundleError` naming each failure."""
    with _open(bundle) as tar:
        manifest, _ = _verified(tar, str(bundle), trusted)
    return manifest


def _verified(tar: tarfile.TarFile, where: str,
              trusted: TrustedKeys) -> tuple[Manifest, dict[str, tarfile.TarInfo]]:
    problems: list[str] = []
    members: dict[str, tarfile.TarInfo] = {}
    try:
        all_members = tar.getmembers()
    except (tarfile.TarError, EOFError) as exc:
        raise BundleError(where, [f"damaged archive: {exc}"]) from None
    for member in all_members:
        if why := _member_problem(member):
            problems.append(why)
        elif member.name in members:
            problems.append(f"{member.name!r}: in the archive twice (refused)")
        else:
            members[member.name] = member
    if MANIFEST not in members or SIGNATURE not in members:
        raise BundleError(where, [*problems, "no manifest.json and manifest.sig: not a signed labbridge bundle"])
    body = _read_small(tar, members.pop(MANIFEST))
    signature = _read_small(tar, members.pop(SIGNATURE))
    manifest, manifest_problems = _parse_manifest(body)
    problems += manifest_problems
    if manifest is None:
        raise BundleError(where, problems)
    public = trusted.get(manifest.signer)
    if public is None:
        problems.append(f"unknown signer: key {manifest.signer} is not among the trusted keys "
                        f"({', '.join(sorted(trusted)) or 'none given'})")
    else:
        try:
            public.verify(signature, body)
        except InvalidSignature:
            problems.append(f"bad signature: the manifest was not signed by key {manifest.signer} as it stands")
    files: dict[str, tarfile.TarInfo] = {}
    for name, member in members.items():
        if name.startswith(FILES) and name[len(FILES):]:
            files[name[len(FILES):]] = member
        else:
            problems.append(f"extra file: {name!r} is not a bundle file")
    listed = {f.name: f for f in manifest.files}
    problems += [f"extra file: {name!r} is in the archive but not in the signed manifest"
                 for name in sorted(set(files) - set(listed))]
    problems += [f"missing file: {name!r} is in the signed manifest but not in the archive"
                 for name in sorted(set(listed) - set(files))]
    for name in sorted(set(files) & set(listed)):
        stream = tar.extractfile(files[name])
        assert stream is not None
        size, sha = _digest(stream)
        if (size, sha) != (listed[name].size, listed[name].sha256):
            problems.append(f"altered file: {name!r} does not match the signed manifest "
                            f"({size} bytes, sha256 {sha[:16]}...; signed: {listed[name].size} bytes, "
                            f"{listed[name].sha256[:16]}...)")
    if problems:
        raise BundleError(where, problems)
    return manifest, files


def extract(bundle: Path, trusted: TrustedKeys, dest: Path) -> Manifest:
    """Verify ``bundle``, then write its files under ``dest`` (a folder created here, or an empty one).

    Each file is hashed again as it is written; on any mismatch everything written is removed.
    """
    if dest.is_symlink() or (dest.exists() and (not dest.is_dir() or any(dest.iterdir()))):
        raise BundleError(str(dest), ["the destination must be a new or empty folder"])
    with _open(bundle) as tar:
        manifest, files = _verified(tar, str(bundle), trusted)
        dest.mkdir(mode=0o755, parents=True, exist_ok=True)
        written: list[Path] = []
        try:
            for entry in manifest.files:
                target = _target(dest, entry.name)
                target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                written.append(target)
                stream = tar.extractfile(files[entry.name])
                assert stream is not None
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
                with os.fdopen(fd, "wb") as out:
                    size, sha = _digest(stream, out)
                    out.flush()
                    os.fsync(out.fileno())
                if (size, sha) != (entry.size, entry.sha256):
                    raise BundleError(str(bundle), [f"altered file: {entry.name!r} changed while being extracted"])
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise
    return manifest


def _target(dest: Path, name: str) -> Path:
    """Where ``name`` goes under ``dest``, refused unless it stays inside (no folder on the way is a symlink)."""
    if why := _check_name(name):
        raise BundleError(name, [why])
    root = dest.resolve()
    target = root.joinpath(*PurePosixPath(name).parts)
    parent = target.parent
    while parent != root:
        if parent.is_symlink():
            raise BundleError(name, ["a folder on its path is a symlink (refused)"])
        parent = parent.parent
    if not target.resolve().is_relative_to(root):
        raise BundleError(name, ["path leaves the destination (refused)"])
    return target
