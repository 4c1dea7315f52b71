"""Slow, opt-in: the device harness on ARM64 under qemu-user, in an arm64 Debian root file system with the aarch64
wheels of the runtimes. Proves the harness runs on ARM; emulated timings are never stored as a profile.

    pytest -m slow tests/test_harness_arm.py

Builds (once, cached in $EDGEKIT_ARM_ROOT or ~/.cache/edgekit/arm64-bookworm): `debootstrap --foreign` of Debian
bookworm arm64 (minbase + python3.11; the packages are unpacked with dpkg-deb, no second stage is needed because
qemu-aarch64 -L runs the guest's binaries directly) and `pip install --target` of the aarch64 wheels of numpy,
onnxruntime and ai-edge-litert; for ExecuTorch, a second folder with the aarch64 wheels of executorch (without its
export-side dependencies: the harness loads only the runtime extension) and the torch it links against. On aarch64
Linux, PyPI's torch 2.14.1 is the CUDA 13 build: it needs the nvidia-* / cuda-toolkit aarch64 wheels to import even
without a GPU, about 5.3 GB installed; `import torch` takes ~45 s under qemu. The runtimes' CPU detection reads
/proc/cpuinfo, which qemu-user passes through from
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

from edgekit.devices import harness
from edgekit.devices.facts import check_device_fits_target
from edgekit.devices.uri import parse_device_uri
from edgekit.errors import SettingsError
from edgekit.latency.profile import add_entry, new_profile, save_profile
from edgekit.targets import load_target

pytestmark = pytest.mark.slow

SUITE, MIRROR = "bookworm", "http://deb.debian.org/debian"
PY = "python3.11"
WHEELS = ["numpy", "onnxruntime==1.32.0", "ai-edge-litert==2.3.0"]
# The executorch runtime extension needs torch (it links libtorch); executorch's other dependencies serve exporting.
ET_WHEELS = ["torch==2.14.1", "numpy"]
ET_NO_DEPS = ["executorch==1.5.1"]
# pip on the device accepts every manylinux tag its glibc allows; a cross install must list them (the nvidia wheels
# are tagged manylinux_2_18 / _2_27 / _2_28; Debian bookworm has glibc 2.36).
ARM_TAGS = [f"manylinux_2_{v}_aarch64" for v in range(17, 37)] + ["manylinux2014_aarch64"]
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


def _executorch_site(base: Path) -> Path:
    """The aarch64 executorch runtime and torch, installed once beside the root file system."""
    site, stamp = base / "site-executorch", base / ".complete-executorch"
    if stamp.exists():
        return site
    shutil.rmtree(site, ignore_errors=True)
    common = ["--target", str(site), *[a for t in ARM_TAGS for a in ("--platform", t)], "--python-version", "3.11",
              "--implementation", "cp", "--only-binary=:all:"]
    for extra, wheels in (([], ET_WHEELS), (["--no-deps"], ET_NO_DEPS)):
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *extra, *common, *wheels], check=True,
                       capture_output=True, timeout=3600)
    stamp.write_text("ok\n")
    return site


@pytest.fixture(scope="module")
def arm_root() -> Path:
    missing = [t for t in ("debootstrap", "dpkg-deb", "qemu-aarch64", "unshare") if not shutil.which(t)]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (Makefile APT_PACKAGES: debootstrap, qemu-user)")
    if os.geteuid() != 0:
        pytest.skip("debootstrap and the private /proc/cpuinfo mount need root")
    return _arm_root()


def _run_emulated(root: Path, *args: str, site: str = "") -> dict:
    script = 'mount --bind "$1" /proc/cpuinfo && shift && exec "$@"'
    cmd = ["unshare", "--mount", "sh", "-c", script, "sh", str(root / "cpuinfo"), "qemu-aarch64", "-cpu",
           "cortex-a72", "-L", str(root / "rootfs"), str(root / "rootfs/usr/bin" / PY), str(Path(harness.__file__)),
           *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1200,
                       env={**os.environ, "PYTHONPATH": ":".join(p for p in (str(root / "site"), site) if p)})
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


def test_executorch_program_runs_on_arm64_and_is_profiled(arm_root: Path, digits_run: Path):
    from edgekit.runtimes.executorch import per_op_from_harness

    site = _executorch_site(arm_root)
    pte = digits_run / "artifacts" / "model_fp32.pte"
    out = _run_emulated(arm_root, str(pte), "--runs", "5", "--warmup", "1", "--profile-runs", "2", site=str(site))
    assert out["ok"], out
    assert out["runtime"].startswith("executorch 1.5.1") and out["format"] == "pte"
    assert out["device"]["arch"] == "aarch64" and out["device"]["emulated"] is True
    assert out["timing"]["runs"] == 5 and out["timing"]["p50_ms"] > 0
    # The ETDump recorded on ARM decodes here, onto the layers of the host's export.
    prof = per_op_from_harness(out, pte)
    assert prof["runs"] == 2 and prof["mapped"]
    assert {o["layer"] for o in prof["per_op"] if o["layer"]} >= {"0", "3", "7", "10", "15"}
    with pytest.raises(SettingsError, match="emulat"):
        check_device_fits_target(out["device"], load_target("rpi4"), parse_device_uri("local"))
