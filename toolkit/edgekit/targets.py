"""Targets: what a device is and what its runtimes can do, loaded from targets/*.toml.

Capability rules that are code (e.g. XNNPACK's sparse-inference rules) live in Python beside the runtime they
describe; a target names them through `RuntimeSpec.sparse_rules`.
"""

from __future__ import annotations

import os
import platform
import tomllib
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path

from edgekit.errors import SettingsError, unknown

_PACKAGE_DIR = Path(__file__).resolve().parent


def project_root() -> Path:
    """The folder holding targets/, recipes/ and profiles/ (override with EDGEKIT_HOME): the package's own _data/
    in an installed wheel (setup.py copies them there), else the checkout this package lives in."""
    env = os.environ.get("EDGEKIT_HOME")
    if env:
        return Path(env)
    shipped = _PACKAGE_DIR / "_data"
    if (shipped / "targets").is_dir():
        return shipped
    return _PACKAGE_DIR.parents[1]


def targets_dir() -> Path:
    return project_root() / "targets"


@dataclass(frozen=True)
class RuntimeSpec:
    """One runtime on a target and what it accelerates."""

    name: str  # module under edgekit.runtimes, e.g. "litert", "onnxruntime"
    format: str  # artifact format it runs: "tflite", "onnx", "tvm"
    delegate: str = ""  # e.g. "xnnpack"
    sparse_rules: str = "none"  # name of the sparse-inference rule set (edgekit.rules.<name>)
    int8: bool = True  # whether the runtime has INT8 kernels
    int8_ops: tuple[str, ...] = ()  # ops with INT8 kernels (empty: all common ops)
    notes: str = ""


@dataclass(frozen=True)
class Target:
    """A device edgekit compresses for."""

    name: str
    description: str
    arch: str  # "x86_64", "aarch64", "wasm32"
    cpu: str
    cores: int
    threads: int
    simd: tuple[str, ...]
    memory_mb: int
    runtimes: tuple[RuntimeSpec, ...]
    default_recipe: str
    is_host: bool = False  # True: the device is the machine edgekit runs on, so its latencies are measured here
    device_kind: str = "linux"  # "linux", "android", "browser": how a device runner reaches it
    notes: str = ""
    # Channel counts that the target's CPU kernels process without a ragged tail: the output-channel tile of the
    # float and INT8 GEMM / convolution micro-kernels (XNNPACK's NR, MLAS's NCHWc block). Channel pruning keeps a
    # multiple of it. "auto" (host) is read from the CPU's SIMD features: see simd_channel_multiple.
    channel_multiple: int = 8

    @property
    def formats(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r.format for r in self.runtimes))

    def runtime_for(self, fmt: str) -> RuntimeSpec | None:
        return next((r for r in self.runtimes if r.format == fmt), None)


_TARGET_KEYS = {f.name for f in fields(Target)} - {"runtimes", "is_host"} | {"runtimes", "host"}
_RUNTIME_KEYS = {f.name for f in fields(RuntimeSpec)}


def list_targets() -> list[str]:
    return sorted(p.stem for p in targets_dir().glob("*.toml"))


@cache
def load_target(name: str) -> Target:
    """Loads targets/<name>.toml; `host` fills CPU facts from this machine.

    Args:
        name: a target name (see `edgekit targets`) or a path to a .toml file.
    """
    path = Path(name) if name.endswith(".toml") else targets_dir() / f"{name}.toml"
    if not path.is_file():
        raise unknown("target", name, list_targets(), "Run `edgekit targets` to list them")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise SettingsError(f"{path}: not valid TOML: {e}") from None
    return _parse_target(raw, path)


def _parse_target(raw: dict, path: Path) -> Target:
    extra = set(raw) - _TARGET_KEYS
    if extra:
        raise SettingsError(f"{path}: unknown keys {sorted(extra)}; allowed: {sorted(_TARGET_KEYS)}")
    runtimes = []
    for rt in raw.get("runtimes", []):
        bad = set(rt) - _RUNTIME_KEYS
        if bad:
            raise SettingsError(f"{path}: unknown runtime keys {sorted(bad)}; allowed: {sorted(_RUNTIME_KEYS)}")
        if "int8_ops" in rt:
            rt = {**rt, "int8_ops": tuple(rt["int8_ops"])}
        runtimes.append(RuntimeSpec(**rt))
    is_host = bool(raw.get("host", False))
    values = {k: v for k, v in raw.items() if k not in ("runtimes", "host")}
    if is_host:
        facts = host_facts()
        for key in ("arch", "cpu", "cores", "simd", "memory_mb"):
            if values.get(key) in (None, "auto", 0, []):
                values[key] = facts[key]
        if values.get("threads") in (None, "auto", 0):
            values["threads"] = facts["cores"]
    missing = {"name", "description", "arch", "cpu", "cores", "threads", "simd", "memory_mb", "default_recipe"} - set(values)
    if missing:
        raise SettingsError(f"{path}: missing keys {sorted(missing)}")
    values["simd"] = tuple(values["simd"])
    values["channel_multiple"] = _channel_multiple(values.get("channel_multiple", 8), values, path)
    if not runtimes:
        raise SettingsError(f"{path}: a target needs at least one [[runtimes]] entry")
    return Target(runtimes=tuple(runtimes), is_host=is_host, **values)


def simd_channel_multiple(arch: str, simd: tuple[str, ...] | list[str]) -> int:
    """The output-channel tile of a CPU's float and INT8 convolution kernels, from its SIMD features.

    AVX-512: 16 (MLAS's NCHWc block and XNNPACK's f32 / qs8-VNNI GEMM tiles are 16 channels wide); AVX / AVX2: 8
    (NCHWc block 8, XNNPACK 8-wide f32 tiles); ARM NEON: 8 (XNNPACK's 4x8 / 6x8 f32 and 8-column qs8 tiles); WebAssembly
    SIMD128 and plain SSE: 4 (one 128-bit vector of floats). Anything else: 1 (no rounding).
    """
    feats = set(simd)
    if arch in ("x86_64", "amd64", "i686"):
        if "avx512f" in feats:
            return 16
        return 8 if feats & {"avx", "avx2"} else 4
    if arch == "aarch64" or "neon" in feats:
        return 8
    if arch == "wasm32":
        return 4
    return 1


def _channel_multiple(value: object, values: dict, path: Path) -> int:
    if value == "auto":
        return simd_channel_multiple(str(values["arch"]), tuple(values["simd"]))
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise SettingsError(f"{path}: channel_multiple must be a positive integer or \"auto\", got {value!r}")
    return value


@cache
def host_facts() -> dict:
    """CPU model, core count, SIMD features and memory of this machine."""
    arch = platform.machine()
    cpu, flags = arch, set()
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            key, _, val = line.partition(":")
            key = key.strip()
            if key in ("model name", "Model", "CPU part") and cpu == arch:
                cpu = val.strip()
            if key in ("flags", "Features"):
                flags.update(val.split())
    except OSError:
        pass
    simd = [s for s in ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni") if s in flags]
    if "asimd" in flags or arch == "aarch64":
        simd.append("neon")
    if "asimddp" in flags:
        simd.append("dotprod")
    mem_mb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_mb = int(line.split()[1]) // 1024
    except OSError:
        pass
    return {
        "arch": arch,
        "cpu": cpu,
        "cores": os.cpu_count() or 1,
        "simd": simd,
        "memory_mb": mem_mb,
        "hostname": platform.node(),
        "system": f"{platform.system()} {platform.release()}",
    }
