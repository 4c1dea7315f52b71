"""Real parts on 127.0.0.1 for tests and benchmarks: sshd "devices" (key authentication, their own host keys, a
temporary folder as the device's working directory) and a PostgreSQL server in a temporary folder.

A device can be made slow (a wrapper Python that starts late: a slow link or a slow board's start-up; the timing
itself is still real) or made to die (a wrapper that, on its K-th run, kills the device's sshd and every connection
to it, mid-measurement). Every process started here is stopped by `stop()`.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = "/usr/sbin/sshd"


class Missing(Exception):
    """A binary the real parts need is not installed (tests skip with this reason)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True, timeout=30)


def require_sshd() -> None:
    if not (Path(SSHD).exists() and shutil.which("ssh") and shutil.which("ssh-keygen")):
        raise Missing("openssh-server / openssh-client not installed (Makefile APT_PACKAGES lists them)")
    if not Path("/run/sshd").is_dir():
        try:
            Path("/run/sshd").mkdir(mode=0o755, parents=True)  # sshd's privilege-separation directory
        except OSError:
            raise Missing("sshd needs /run/sshd and this user cannot create it") from None


@dataclass
class LoopbackDevice:
    """One sshd on a free port of 127.0.0.1."""

    name: str
    dir: Path
    home: Path
    port: int
    user: str
    key: Path
    known_hosts: Path
    python: str
    proc: subprocess.Popen

    def uri(self, **opts: str) -> str:
        o = {"identity": str(self.key), "known_hosts": str(self.known_hosts), "python": self.python,
             "timeout": "120", **opts}
        return f"ssh://{self.user}@127.0.0.1:{self.port}?" + "&".join(f"{k}={v}" for k, v in o.items())

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)  # the listener and its connections
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def start_sshd(root: Path, name: str, client_key: Path, python: str | None = None) -> LoopbackDevice:
    """Starts sshd in its own process group (so the device can be killed whole) and waits until it listens."""
    require_sshd()
    d = root / name
    home = d / "home"
    home.mkdir(parents=True)
    keygen(d / "host_key")
    (d / "authorized_keys").write_text(Path(f"{client_key}.pub").read_text())
    port = free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nMaxStartups 50\n"
        f"PidFile {d / 'sshd.pid'}\nSetEnv TMPDIR={home}\n")
    host_pub = " ".join((d / "host_key.pub").read_text().split()[:2])
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub}\n")
    proc = subprocess.Popen([SSHD, "-D", "-f", str(d / "sshd_config"), "-E", str(d / "sshd.log")],
                            start_new_session=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {(d / 'sshd.log').read_text()}") from None
            time.sleep(0.1)
    return LoopbackDevice(name, d, home, port, os.environ.get("USER") or "root", client_key, d / "known_hosts",
                          python or sys.executable, proc)


def slow_python(path: Path, delay_s: float) -> str:
    """A device Python that starts `delay_s` late (a slow link or a slow board's start-up) at lowest priority."""
    path.write_text(f"#!/bin/sh\nsleep {delay_s}\nexec nice -n 19 {sys.executable} \"$@\"\n")
    path.chmod(0o755)
    return str(path)


def dying_python(path: Path, after: int) -> str:
    """A device Python that, on its `after`-th run, kills the device: its sshd listener (later connections are
    refused) and the sshd processes of this very connection (the measurement in flight is cut)."""
    count = path.with_suffix(".count")
    pid = path.parent / "sshd.pid"
    path.write_text(
        "#!/bin/sh\n"
        f"n=$(cat {count} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {count}\n"
        f"if [ $n -ge {after} ]; then\n"
        f"  L=$(cat {pid}); kill -KILL -$L\n"
        "  p=$PPID\n"
        "  while [ \"$p\" -gt 1 ] && [ \"$p\" != \"$L\" ]; do\n"
        "    q=$(cut -d' ' -f4 /proc/$p/stat)\n"
        "    case \"$(cat /proc/$p/comm)\" in sshd*) kill -KILL $p;; esac\n"
        "    p=$q\n"
        "  done\n"
        "  exit 1\n"
        "fi\n"
        f"exec {sys.executable} \"$@\"\n")
    path.chmod(0o755)
    return str(path)


def farm_toml(path: Path, devices: list[tuple[str, str, str]], **farm: object) -> Path:
    """A devices.toml for (name, uri, target) entries."""
    lines = ["[farm]", *(f"{k} = {v!r}" if isinstance(v, str) else f"{k} = {v}" for k, v in farm.items()), ""]
    for name, uri, target in devices:
        lines += ["[[device]]", f'name = "{name}"', f'uri = "{uri}"', f'target = "{target}"', "concurrency = 1", ""]
    path.write_text("\n".join(lines).replace("'", '"'))
    return path


@dataclass
class Postgres:
    """A PostgreSQL server on 127.0.0.1 in a temporary folder (trust authentication: a test server)."""

    dir: Path
    port: int
    bindir: Path
    user: str | None

    @property
    def url(self) -> str:
        return f"postgresql://edgekit@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str) -> subprocess.CompletedProcess:
        pre = ["runuser", "-u", self.user, "--"] if self.user else []
        return subprocess.run([*pre, *argv], capture_output=True, text=True, timeout=120)

    def stop(self) -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


def postgres_bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise Missing("PostgreSQL server binaries (initdb, pg_ctl) are not installed: Debian package `postgresql` "
                  "(Makefile APT_PACKAGES)")


def start_postgres() -> Postgres:
    """initdb + pg_ctl start on a free port. PostgreSQL refuses to run as root: as root it runs as `nobody`."""
    bindir = postgres_bindir()
    user = None
    if os.geteuid() == 0:
        if not shutil.which("runuser"):
            raise Missing("running PostgreSQL as root needs runuser (util-linux) to drop to nobody")
        user = "nobody"
    d = Path(tempfile.mkdtemp(prefix="edgekit-pg-"))  # under /tmp: `nobody` cannot reach pytest's private folders
    if user:
        shutil.chown(d, user)
    pg = Postgres(d, free_port(), bindir, user)
    r = pg._run(str(bindir / "initdb"), "-D", str(d / "data"), "-U", "edgekit", "--auth=trust", "-E", "UTF8",
                "--no-sync")
    if r.returncode != 0:
        shutil.rmtree(d, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {r.stderr[-500:]}")
    r = pg._run(str(bindir / "pg_ctl"), "-D", str(d / "data"), "-l", str(d / "log"), "-w", "-o",
                f"-p {pg.port} -k {d} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=60", "start")
    if r.returncode != 0:
        log = (d / "log").read_text() if (d / "log").exists() else r.stderr
        shutil.rmtree(d, ignore_errors=True)
        raise RuntimeError(f"pg_ctl start failed: {log[-500:]}")
    return pg
