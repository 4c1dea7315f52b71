"""edgekit.child: converters run in a forked child that exits, taking their memory with it."""

from __future__ import annotations

import os
import signal
import sys

import numpy as np
import pytest

from edgekit import child, heap
from edgekit.errors import EdgekitError, SettingsError

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here: edgekit.child runs in-process")


@pytest.fixture
def _forks(monkeypatch: pytest.MonkeyPatch) -> None:
    """An earlier test in this worker may have started JAX (any LiteRT conversion), which turns forking off; these
    children never touch JAX, so they may fork all the same."""
    import types

    monkeypatch.setitem(sys.modules, "jax._src.xla_bridge", types.SimpleNamespace(_backends={}))
    monkeypatch.delenv("EDGEKIT_IN_PROCESS", raising=False)
    assert child.enabled()


forks = pytest.mark.usefixtures("_forks")


def _allocate(mb: int) -> int:
    block = np.ones(mb * 2**20, np.uint8)  # touched: resident in the child
    return int(block.sum() // 2**20)


@forks
def test_result_comes_back_and_memory_stays_in_the_child() -> None:
    heap.trim()
    child.drain()
    before = heap.resident_mb()
    assert child.call("allocating", _allocate, 400) == 400
    record = child.drain()
    assert record["count"] == 1 and record["largest"] == "allocating" and record["peak_rss_mb"] >= 400
    assert child.drain() is None
    assert heap.resident_mb() - before < 100  # the child's 400 MB left with it
    assert heap.peak_mb() >= 400  # and the run's peak says it was there (RUSAGE_CHILDREN)


@forks
def test_exception_is_raised_in_the_parent_as_it_was() -> None:
    def refuse() -> None:
        raise SettingsError("export: unknown thing 'x'")

    with pytest.raises(SettingsError, match="unknown thing 'x'"):
        child.call("refusing", refuse)


@forks
def test_an_exception_that_does_not_pickle_becomes_one_line() -> None:
    class Local(Exception):  # a local class cannot be pickled by reference
        pass

    def fail() -> None:
        raise Local("converter said no")

    with pytest.raises(EdgekitError, match="Local: converter said no"):
        child.call("failing", fail)


@forks
def test_a_child_that_dies_is_an_error_naming_the_work() -> None:
    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(EdgekitError, match=r"tflite export died in its child process \(killed by SIGKILL"):
        child.call("tflite export", die)


@forks
@pytest.mark.timeout(60)
def test_torch_runs_in_the_child_after_the_parent_ran_it_in_parallel() -> None:
    import torch

    conv = torch.nn.Conv2d(3, 16, 3)
    x = torch.randn(4, 3, 64, 64)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        expected = conv(x).detach().numpy()  # the parent's OpenMP pool is up
        got = child.call("a torch op", lambda: conv(x).detach().numpy())
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@forks
def test_in_process_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEKIT_IN_PROCESS", "1")
    assert child.call("pid", os.getpid) == os.getpid()
    monkeypatch.delenv("EDGEKIT_IN_PROCESS")
    assert child.call("pid", os.getpid) != os.getpid()


def test_in_process_once_jax_has_started(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    started = types.SimpleNamespace(_backends={"cpu": object()})  # what jax._src.xla_bridge holds once it has run
    monkeypatch.setitem(sys.modules, "jax._src.xla_bridge", started)
    assert not child.enabled()
    assert child.call("pid", os.getpid) == os.getpid()


def test_only_big_weights_go_to_a_child(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGEKIT_CHILD_ABOVE_MB", raising=False)
    limit = int(child.CHILD_ABOVE_MB * 2**20)
    assert child.for_size(limit - 1) is not child.call and child.for_size(limit) is child.call
    assert child.for_size(limit - 1)("work", os.getpid) == os.getpid()
    monkeypatch.setenv("EDGEKIT_CHILD_ABOVE_MB", "0")
    assert child.for_size(0) is child.call


_TINY = """torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 1), torch.nn.Flatten(),
                    torch.nn.Linear(8 * 6 * 6, 10)).eval()"""
_CHECK_IN_A_CHILD = f"""
import json, torch
from edgekit import child, rules
from edgekit.targets import load_target
torch.manual_seed(0)
model = {_TINY}
verdicts = [v.as_dict() for v in rules.check_model(model, load_target("host"), (1, 1, 8, 8))]
print(json.dumps({{"verdicts": verdicts, "children": child.drain()}}))
"""


@pytest.mark.timeout(300)
def test_check_converts_in_a_child_as_it_does_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real converters (LiteRT, ExecuTorch) in a child give the verdicts they give in-process. The forked run is
    a fresh process, as a run is: in this one an earlier test may have started JAX, after which nothing may convert
    in a child."""
    import json
    import subprocess

    import torch

    from edgekit import rules
    from edgekit.targets import load_target

    r = subprocess.run([sys.executable, "-c", _CHECK_IN_A_CHILD], capture_output=True, text=True, timeout=280,
                       env={**os.environ, "EDGEKIT_CHILD_ABOVE_MB": "0"})
    assert r.returncode == 0, r.stderr[-2000:]
    forked = json.loads(r.stdout.strip().splitlines()[-1])
    assert forked["children"]["count"] >= 1 and forked["children"]["largest"].startswith("check's ")

    monkeypatch.setenv("EDGEKIT_IN_PROCESS", "1")
    child.drain()
    torch.manual_seed(0)
    model = eval(_TINY)  # noqa: S307 - the same literal the child ran
    here = [v.as_dict() for v in rules.check_model(model, load_target("host"), (1, 1, 8, 8))]
    assert child.drain() is None and forked["verdicts"] == json.loads(json.dumps(here))
