"""Subprocesses of the benchmarks: labbridge's daemon, the acker LIS, the bare server; CPU and memory from /proc."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT

CLK_TCK = os.sysconf("SC_CLK_TCK")


class Proc:
    """A child process started with ``python -m MODULE``; it writes a ready file (JSON) once it listens."""

    def __init__(self, module: str, args: list[str], ready: Path, log: Path, *, timeout: float = 120.0) -> None:
        self.ready_path = ready
        self.log_path = log
        ready.unlink(missing_ok=True)
        self._log = log.open("wb")
        self.popen = subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, stdout=self._log,
                                      stderr=subprocess.STDOUT)
        self.started_at = time.monotonic()
        deadline = self.started_at + timeout
        while not ready.exists():
            if self.popen.poll() is not None:
                raise RuntimeError(f"{module} exited with {self.popen.returncode}: {self.tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{module} not ready after {timeout:.0f} s: {self.tail()}")
            time.sleep(0.01)
        self.ready_at = time.monotonic()
        self.ready: dict[str, Any] = json.loads(ready.read_text(encoding="utf-8"))

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, chars: int = 2000) -> str:
        self._log.flush()
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError:
            return ""

    def pids(self) -> list[int]:
        """The process and its live descendants (labbridge's store writer process, say)."""
        return [self.pid, *descendants(self.pid)]

    def cpu_seconds(self) -> float:
        """User + system CPU of the process and its live descendants (all threads), from /proc/PID/stat."""
        total = 0.0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/stat", encoding="ascii") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:  # gone meanwhile
                continue
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15 of stat)
        return total

    def memory(self) -> dict[str, int]:
        """VmRSS and VmHWM (peak RSS) in bytes, from /proc/PID/status, summed over the process and its live
        descendants (the sum of peaks: an upper bound of the peak of the sum)."""
        out = {"VmRSS": 0, "VmHWM": 0}
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/status", encoding="ascii") as f:
                    for line in f:
                        if line.startswith(("VmRSS:", "VmHWM:")):
                            key, value = line.split(":", 1)
                            out[key] += int(value.split()[0]) * 1024
            except OSError:
                continue
        return out

    def memory_once(self) -> int:
        """Bytes held by the process and its live descendants with shared pages counted once: the process's
        RSS plus each descendant's private pages (Private_Clean + Private_Dirty of /proc/PID/smaps_rollup).
        The store writer is started afresh, not forked: what it shares with the daemon is the interpreter and
        its libraries, which the sum of RSS counts twice."""
        total = 0
        for i, pid in enumerate(self.pids()):
            rollup = smaps_rollup(pid)
            total += rollup.get("Rss", 0) if i == 0 else rollup.get("Private_Clean", 0) + rollup.get("Private_Dirty", 0)
        return total

    def stop(self, timeout: float = 30.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()
        return self.popen.returncode


def smaps_rollup(pid: int) -> dict[str, int]:
    """The byte counts of /proc/PID/smaps_rollup (Rss, Pss, Private_Dirty ...); empty if the process is gone."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as f:
            for line in f:
                key, sep, rest = line.partition(":")
                parts = rest.split()
                if sep and len(parts) == 2 and parts[1] == "kB":
                    out[key] = int(parts[0]) * 1024
    except OSError:
        pass
    return out


class PeakSampler:
    """Samples a process's memory every 0.1 s on a thread while in use: the peak of the sum of RSS over the
    process and its descendants, and the peak with shared pages counted once (:meth:`Proc.memory_once`)."""

    def __init__(self, proc: Proc) -> None:
        self.proc = proc
        self.peak_rss = 0
        self.peak_once = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-sampler", daemon=True)

    def sample(self) -> None:
        self.peak_rss = max(self.peak_rss, self.proc.memory()["VmRSS"])
        self.peak_once = max(self.peak_once, self.proc.memory_once())

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(0.1)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


# MLLP connections from labbridge to the LIS (its ``connections`` setting); ``--lis-connections`` sets it.
LIS_CONNECTIONS = 4


def daemon_config(folder: Path, *, instruments: int, lis_port: int) -> Path:
    """A labbridge config: ``instruments`` tcp-server ASTM instruments on 127.0.0.1 port 0, one MLLP LIS
    (``LIS_CONNECTIONS`` connections)."""
    lines = [
        'node = "bench"',
        "[store]", f'path = "{folder / "labbridge.db"}"',
        "[http]", "enabled = false",
        "[log]", 'level = "warning"',
        "[[sites]]", 'id = "bench"', 'name = "Benchmark"',
    ]
    for i in range(instruments):
        lines += ["[[instruments]]", f'id = "an{i}"', 'site = "bench"', 'driver = "astm-generic"',
                  'transport = { kind = "tcp-server", host = "127.0.0.1", port = 0 }']
    lines += ["[[lis]]", 'id = "lis"', 'host = "127.0.0.1"', f"port = {lis_port}", "connect_timeout_s = 2",
              "ack_timeout_s = 10", "backoff_initial_s = 0.05", "backoff_max_s = 1",
              f"connections = {LIS_CONNECTIONS}"]
    path = folder / "labbridge.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def start_daemon(folder: Path, *, instruments: int, lis_port: int) -> Proc:
    config = daemon_config(folder, instruments=instruments, lis_port=lis_port)
    return Proc("labbridge.cli", ["run", "-c", str(config), "--ready-file", str(folder / "daemon-ready.json")],
                folder / "daemon-ready.json", folder / "daemon.log")


def start_acker(folder: Path, port: int = 0) -> Proc:
    return Proc("benchmarks.mllp_acker", ["--port", str(port), "--ready", str(folder / "lis-ready.json"),
                                          "--progress", str(folder / "lis-progress.json"),
                                          "--out", str(folder / "lis-books.json")],
                folder / "lis-ready.json", folder / "lis.log")


def acker_progress(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "lis-progress.json").read_text(encoding="utf-8"))  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return {"messages": 0, "distinct": 0, "results": 0}


def acker_books(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "lis-books.json").read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def targets(daemon: Proc) -> list[tuple[str, int]]:
    return [(v["host"], v["port"]) for v in daemon.ready["instruments"].values() if v]


def descendants(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as f:
                children = [int(c) for c in f.read().split()]
        except OSError:
            continue
        for child in children:
            out += [child, *descendants(child)]
    return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
