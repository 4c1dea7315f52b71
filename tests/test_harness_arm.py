"""Slow, opt-in: the device harness on ARM64 under qemu-user, in an arm64 Debian root file system with the aarch64
wheels of the runtimes. Proves the harness runs on ARM; emulated timings are never stored as a profile.

    pytest -m slow tests/test_harness_arm.py

Builds (once, cached in $EDGEKIT_ARM_ROOT or ~/.cache/edgekit/arm64-bookworm): `debootstrap --foreign` of Debian
bookworm arm64 (minbase + python3.11; the packages are unpacked with dpkg-deb, no second stage is needed because
qemu-aarch64 -L runs the guest's binaries directly) and `pip install --target` of the aarch64 wheels of numpy,
onnxruntime and ai-edge-litert. The runtimes' CPU detection reads /proc/cpuinfo, which qemu-user passes through from
the x86 host (and they crash on it), so the harness runs in a private mount namespace where /proc/cpuinfo is an ARM
(Cortex-A72) description; the harness still reports the device as emulated (the kernel's /sys says x86).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgekit.errors import SettingsError
from edgekit.measure import harness
from edgekit.measure.device import check_device_fits_target, parse_device_uri
from edgekit.measure.profile import add_entry, new_profile, save_profile
from edgekit.targets import load_target

pytestmark = pytest.mark.slow

SUITE, MIRROR = "bookworm", "http://deb.debian.org/debian"
PY = "python3.11"
WHEELS = ["numpy", "onnxruntime==1.32.0", "ai-edge-litert==2.3.0"]
CPU = "".join(f"processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: "
              f"0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n"
              for i in range(4))


def _arm_root() -> Path:
    base = Path(os.environ.get("EDGEKIT_ARM_ROOT", Path.home() / ".cache" / "edgekit" / f"arm64-{SUITE}"))
    stamp = base / ".complete"
    if stamp.exists():
        return base
    rootfs, site = base / "rootfs", base / "site"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    subprocess.run(["debootstrap", "--foreign", "--arch=arm64", "--variant=minbase",
                    f"--include=python3-minimal,{PY}-minimal,lib{PY}-stdlib,lib{PY}-minimal", SUITE, str(rootfs),
                    MIRROR], check=True, capture_output=True, timeout=1800)
    # --foreign unpacks only the essential packages; the rest wait in the archive cache for a second stage that
    # would need binfmt_misc. Unpacking them is all the harness needs.
    for deb in sorted((rootfs / "var/cache/apt/archives").glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(rootfs)], check=True, timeout=300)
    platforms = [a for p in ("manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux2014_aarch64",
                             "manylinux_2_17_aarch64") for a in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(site), *platforms,
                    "--python-version", "3.11", "--implementation", "cp", "--only-binary=:all:", *WHEELS],
                   check=True, capture_output=True, timeout=1800)
    (base / "cpuinfo").write_text(CPU)
    stamp.write_text("ok\n")
    return base


@pytest.fixture(scope="module")
def arm_root() -> Path:
    missing = [t for t in ("debootstrap", "dpkg-deb", "qemu-aarch64", "unshare") if not shutil.which(t)]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (Makefile APT_PACKAGES: debootstrap, qemu-user)")
    if os.geteuid() != 0:
        pytest.skip("debootstrap and the private /proc/cpuinfo mount need root")
    return _arm_root()


def _run_emulated(root: Path, *args: str) -> dict:
    script = 'mount --bind "$1" /proc/cpuinfo && shift && exec "$@"'
    cmd = ["unshare", "--mount", "sh", "-c", script, "sh", str(root / "cpuinfo"), "qemu-aarch64", "-cpu",
           "cortex-a72", "-L", str(root / "rootfs"), str(root / "rootfs/usr/bin" / PY), str(Path(harness.__file__)),
           *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1200,
                       env={**os.environ, "PYTHONPATH": str(root / "site")})
    assert r.stdout.strip(), r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_harness_runs_on_arm64_and_is_labelled_emulated(arm_root: Path, digits_run: Path, tmp_path: Path):
    arts = digits_run / "artifacts"
    out = _run_emulated(arm_root, str(arts / "model_fp32.tflite"), str(arts / "model_fp32.onnx"), "--runs", "5",
                        "--warmup", "1", "--profile-runs", "2")
    assert out["ok"], out
    tfl, onx = out["results"]
    assert tfl["runtime"].startswith("litert 2.3.0") and onx["runtime"] == "onnxruntime 1.32.0"
    for r in (tfl, onx):
        assert r["device"]["arch"] == "aarch64" and r["device"]["emulated"] is True
        assert r["timing"]["runs"] == 5 and r["timing"]["p50_ms"] > 0
    assert onx["per_op"], "ONNX Runtime's per-operator profile is missing on ARM"
    # Emulated timings are never latencies and never stored.
    with pytest.raises(SettingsError, match="emulat"):
        check_device_fits_target(onx["device"], load_target("rpi4"), parse_device_uri("local"))
    prof = new_profile("rpi4", "qemu-aarch64", onx["device"], "local")
    add_entry(prof, onx["artifact"], "onnx", onx["runtime"], 1, onx["timing"])
    with pytest.raises(SettingsError, match="emulated"):
        save_profile(prof, tmp_path)
    assert not list(tmp_path.rglob("*.json"))
