"""Patient data at rest: the store's files (database, -wal, -shm) are 0600, or 0640 for a configured group,
whatever the umask; a store left wider by an older version is tightened at start; a store folder anyone may
write to is refused with one line; a campaign report written to a file is the owner's only."""

from __future__ import annotations

import asyncio
import grp
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from labbridge.errors import StoreError
from labbridge.store.db import Store
from labbridge.store.files import private_file
from tests.conftest import run
from tests.integration.helpers import running_lab


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """A umask that would leave new files world-readable (0644), as on many systems."""
    before = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(before)


def modes(db: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in db.parent.iterdir() if p.name.startswith(db.name)}


def groups(db: Path) -> dict[str, int]:
    return {p.name: p.stat().st_gid for p in db.parent.iterdir() if p.name.startswith(db.name)}


@pytest.mark.usefixtures("loose_umask")
def test_the_store_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    async def body() -> None:
        async with running_lab(tmp_path, instruments=1) as lab:
            sim = lab.analyzer("an-0", messages=1)
            await sim.run(asyncio.Event())
            db = Path(lab.config.store.path)
            found = modes(db)
            assert {"labbridge.db", "labbridge.db-wal", "labbridge.db-shm"} <= set(found)
            assert set(found.values()) == {0o600}, found

    run(body())


@pytest.mark.usefixtures("loose_umask")
def test_a_configured_group_may_read_and_an_older_wider_store_is_tightened(tmp_path: Path) -> None:
    group = grp.getgrgid(os.getgid()).gr_name
    db = tmp_path / "labbridge.db"
    db.write_bytes(b"")
    os.chmod(db, 0o666)

    async def body() -> None:
        async with running_lab(tmp_path, instruments=1, extra={"store": {"path": str(db), "group": group}}):
            found = modes(db)
            assert set(found.values()) == {0o640}, found
            assert set(groups(db).values()) == {os.getgid()}

    run(body())


def test_a_store_folder_anyone_may_write_to_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)

    async def body() -> None:
        with pytest.raises(StoreError) as refused:
            await Store(shared / "labbridge.db").open()
        message = str(refused.value)
        assert "\n" not in message and "writable by everyone" in message and str(shared) in message
        assert not (shared / "labbridge.db").exists()

    run(body())


@pytest.mark.usefixtures("loose_umask")
def test_an_export_is_the_owners_only(tmp_path: Path) -> None:
    private_file(tmp_path / "report.md", "# report\n")
    assert stat.S_IMODE((tmp_path / "report.md").stat().st_mode) == 0o600
