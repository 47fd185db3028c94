"""A real Mosquitto for tests, on a free loopback port (Mosquitto cannot bind port 0), never the machine's own.

    with mosquitto(tmp_path) as broker:     # broker.url == "mqtt://127.0.0.1:PORT"
        ...
        broker.stop(); broker.start()       # the same port again (a broker restart)

:func:`center_and_site` gives two brokers configured by config/mosquitto/ (a site bridged to a center). Persistence
is off: a restarted broker has forgotten every retained message, so what a test sees after it was published again.
The broker's log is in ``broker.log`` (shown when it fails to start).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

MOSQUITTO = "/usr/sbin/mosquitto"
REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True
    return False


class Broker:
    def __init__(self, folder: Path, *, name: str = "broker") -> None:
        self.folder = folder
        self.name = name
        self.port = free_port()
        # The listener and what else it needs (a file of config/mosquitto/, templated): by default anonymous.
        self.body = f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
        self.conf = folder / f"{name}.conf"
        self.log = folder / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        # user root: started as root (a container), mosquitto would become "mosquitto", which cannot read the
        # test's private temporary folder; as any other user the line has no effect.
        self.conf.write_text(f"user root\npersistence false\nlog_dest file {self.log}\nlog_type all\n{self.body}\n",
                             encoding="utf-8")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _accepts(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                self.stop()
                log = self.log.read_text(errors="replace") if self.log.exists() else ""
                raise RuntimeError(f"mosquitto did not start on 127.0.0.1:{self.port}: {err}\n{log[-2000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None


@contextlib.contextmanager
def mosquitto(folder: Path, *, name: str = "broker") -> Iterator[Broker]:
    broker = Broker(folder, name=name)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def center_and_site(folder: Path, *, password: str) -> tuple[Broker, Broker]:
    """Two brokers configured by config/mosquitto/central.conf and site.conf as docs/deploy.md gives them: only
    their addresses and ports (loopback, free ones), file paths and the bridge's password are the test's own.
    Not started."""
    center = Broker(folder, name="center")
    site = Broker(folder, name="site")
    passwd = folder / "labbridge.passwd"
    for user in ("bridge-arlon", "fleet"):
        subprocess.run(["/usr/bin/mosquitto_passwd", "-b", *([] if passwd.exists() else ["-c"]), str(passwd), user,
                        password], check=True, capture_output=True)
    conf = REPO / "config" / "mosquitto"
    center.body = ((conf / "central.conf").read_text(encoding="utf-8")
                   .replace("listener 1883 10.20.0.10", f"listener {center.port} 127.0.0.1")
                   .replace("/etc/mosquitto/labbridge.passwd", str(passwd))
                   .replace("/etc/mosquitto/labbridge.acl", str(conf / "labbridge.acl")))
    site.body = ((conf / "site.conf").read_text(encoding="utf-8")
                 .replace("listener 1883 127.0.0.1", f"listener {site.port} 127.0.0.1")
                 .replace("address 10.20.0.10:1883", f"address 127.0.0.1:{center.port}")
                 .replace("remote_password CHANGE-ME", f"remote_password {password}"))
    return center, site
