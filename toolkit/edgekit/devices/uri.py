"""Device URIs: what --device names, how it is checked, what the report keeps of it, and how an SSH device is
reached (SSHTarget).

    local                                   this machine
    ssh://[user@]host[:port][?options]      a Linux board; options: python=/path/to/python3, identity=KEYFILE,
                                            known_hosts=FILE, accept_new=1 (add an unknown host key on first contact),
                                            timeout=SECONDS
    adb://[SERIAL]                          an Android device (edgekit.devices.adb)

Every scheme (node, chromium and farm:FILE included) is listed in edgekit.devices.
"""

from __future__ import annotations

import subprocess
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from edgekit.errors import SettingsError

_SSH_OPTIONS = {"python", "identity", "known_hosts", "accept_new", "timeout"}


@dataclass(frozen=True)
class SSHTarget:
    """How to reach one device over SSH.

    Args:
        host: host name or address.
        user: login user ("" uses the SSH default).
        port: SSH port.
        identity: private key file (default: the SSH client's own).
        known_hosts: known_hosts file (default: the SSH client's own).
        accept_new: add an unknown host key on first contact (never replaces a changed one).
        python: the device's Python interpreter that has the runtime installed.
        connect_timeout: seconds for the TCP connection + handshake.
        timeout: seconds for each remote step (copy, run, clean-up).
        ssh: the ssh client binary.
        control_dir: a private folder for a multiplexed connection (OpenSSH ControlMaster): the measurements of
            one device then share one authenticated connection instead of a handshake each; "" : none.
    """

    host: str
    user: str = ""
    port: int = 22
    identity: str = ""
    known_hosts: str = ""
    accept_new: bool = False
    python: str = "python3"
    connect_timeout: int = 10
    timeout: int = 600
    ssh: str = "ssh"
    control_dir: str = ""

    @property
    def uri(self) -> str:
        return f"ssh://{self.user + '@' if self.user else ''}{self.host}:{self.port}"

    def base_args(self) -> list[str]:
        args = [self.ssh, "-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout}",
                "-o", f"StrictHostKeyChecking={'accept-new' if self.accept_new else 'yes'}",
                "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4", "-o", "LogLevel=ERROR",
                "-p", str(self.port)]
        if self.known_hosts:
            args += ["-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null"]
        if self.identity:
            args += ["-i", self.identity, "-o", "IdentitiesOnly=yes"]
        if self.control_dir:  # the master lives on alone for 60 s idle at most, if close() never comes
            args += ["-o", "ControlMaster=auto", "-o", f"ControlPath={self.control_dir}/%C",
                     "-o", "ControlPersist=60"]
        args += ["--", f"{self.user}@{self.host}" if self.user else self.host]
        return args

    def close_master(self) -> None:
        """Ends the multiplexed connection (if one is open)."""
        if not self.control_dir:
            return
        argv = self.base_args()
        try:
            subprocess.run([*argv[:-2], "-O", "exit", *argv[-2:]], capture_output=True, timeout=15)
        except (OSError, subprocess.TimeoutExpired):
            pass


@dataclass(frozen=True)
class DeviceURI:
    scheme: str  # "local", "ssh", "adb"
    raw: str
    host: str = ""
    user: str = ""
    port: int = 22
    serial: str = ""
    options: dict[str, str] = field(default_factory=dict)

    def ssh_target(self, **overrides: Any) -> SSHTarget:
        o = self.options
        kw: dict[str, Any] = {"host": self.host, "user": self.user, "port": self.port,
                              "python": o.get("python", "python3"), "identity": o.get("identity", ""),
                              "known_hosts": o.get("known_hosts", ""),
                              "accept_new": o.get("accept_new", "0").lower() in ("1", "true", "yes")}
        if "timeout" in o:
            kw["timeout"] = int(o["timeout"])
        kw.update({k: v for k, v in overrides.items() if v not in (None, "")})
        return SSHTarget(**kw)

    @property
    def display(self) -> str:
        """The URI without options (key paths are local details, not provenance)."""
        if self.scheme == "ssh":
            return f"ssh://{self.user + '@' if self.user else ''}{self.host}:{self.port}"
        return self.raw.split("?", 1)[0]




def parse_device_uri(uri: str) -> DeviceURI:
    """Parses a --device value; raises SettingsError naming the accepted forms."""
    forms = "expected local, ssh://[user@]host[:port] or adb://[SERIAL]"
    if uri in ("local", "local://"):
        return DeviceURI("local", uri)
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme == "adb":
        return DeviceURI("adb", uri, serial=parsed.netloc or parsed.path.strip("/"))
    if parsed.scheme != "ssh":
        raise SettingsError(f"device '{uri}': {forms}")
    try:
        port = parsed.port or 22
    except ValueError:
        raise SettingsError(f"device '{uri}': the port must be a number from 1 to 65535") from None
    host = parsed.hostname or ""
    if not host or host.startswith("-") or parsed.path not in ("", "/"):
        raise SettingsError(f"device '{uri}': {forms}")
    user = urllib.parse.unquote(parsed.username or "")
    if user.startswith("-") or any(c in user for c in " \t\n'\"$`\\;"):
        raise SettingsError(f"device '{uri}': invalid user name '{user}'")
    options = dict(urllib.parse.parse_qsl(parsed.query, keep_blank_values=True))
    bad = set(options) - _SSH_OPTIONS
    if bad:
        raise SettingsError(f"device '{uri}': unknown options {sorted(bad)}; allowed: {sorted(_SSH_OPTIONS)}")
    _check_ssh_options(uri, options)
    return DeviceURI("ssh", uri, host=host, user=user, port=port, options=options)




def _check_ssh_options(uri: str, options: dict[str, str]) -> None:
    if "timeout" in options and not (options["timeout"].isdigit() and 0 < int(options["timeout"]) <= 86400):
        raise SettingsError(f"device '{uri}': timeout must be a whole number of seconds from 1 to 86400, "
                            f"got '{options['timeout']}'")
    if options.get("accept_new", "0").lower() not in ("0", "1", "true", "false", "yes", "no"):
        raise SettingsError(f"device '{uri}': accept_new must be 1 or 0, got '{options['accept_new']}'")
    for key in ("python", "identity", "known_hosts"):
        if key in options and (not options[key] or any(c in options[key] for c in "\n\r\0")):
            raise SettingsError(f"device '{uri}': {key} must be a path")




def device_for_report(device: str | None) -> str | None:
    """What report.json keeps of a --device value: scheme, user, host and port, never options such as key paths.

    Raises:
        SettingsError: when the URI is malformed (checked before a run starts, not when measure reaches it).
    """
    if device is None or "://" not in device:
        return device  # local, node, chromium: names, nothing private
    scheme = device.split("://", 1)[0]
    if scheme in ("ssh", "adb"):
        return parse_device_uri(device).display
    parsed = urllib.parse.urlsplit(device)
    return f"{parsed.scheme}://{parsed.hostname or ''}"
