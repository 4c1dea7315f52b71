"""Public functions: compress(), load_model(), load_target(), load_data().

`edgekit.compress(model, target=..., data=..., recipe="auto")` takes a model (an nn.Module with an example input,
a zoo name or a file), data (arrays, a torch DataLoader, or what --data takes), runs a recipe into a run folder and
returns a `CompressResult`: the compressed torch model, the artifact paths and the report.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgekit.data import DataBundle, from_arrays, load_data
from edgekit.errors import InputError, SettingsError
from edgekit.fileio import fingerprint, sha256_cached
from edgekit.importers import check_import
from edgekit.targets import load_target
from edgekit.zoo import ModelBundle, calibrate_batchnorm, load_model, model_signature

__all__ = ["compress", "CompressResult", "load_model", "load_target", "load_data", "default_out_dir",
           "parse_shape"]

DEFAULT_BUDGET_PTS = 1.0  # points, for --recipe auto (a dB metric has its own: edgekit.quality.DEFAULT_BUDGET)


def parse_shape(text: str | None) -> tuple[int, ...] | dict[str, tuple[int, ...]] | None:
    """'1,3,224,224' -> (1, 3, 224, 224); 'input=1,512 state=2,1,128' -> one shape per named input (any rank;
    'sr=' for a scalar input)."""
    if not text:
        return None
    parts = text.replace(";", " ").split()
    if any("=" in p for p in parts):
        shapes = {}
        for p in parts:
            name, sep, dims = p.partition("=")
            if not sep or not name:
                raise SettingsError(f"--input-shape: expected NAME=D1,D2,... for every input, got '{p}'")
            shapes[name] = _dims(dims, text)
        return shapes
    if len(parts) != 1:
        raise SettingsError(f"--input-shape: name the inputs (NAME=D1,D2,... each) when giving several, got '{text}'")
    return _dims(parts[0].replace("x", ","), text)


def _dims(dims: str, text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(p) for p in dims.split(",") if p != "")
    except ValueError:
        raise SettingsError(f"--input-shape must be integers like 1,3,224,224 (or NAME=1,512 ...), got '{text}'"
                            ) from None
    if any(s <= 0 for s in shape):
        raise SettingsError(f"--input-shape sizes must be positive, got '{text}'")
    return shape


def metric_options(alphabet: str | Path | None = None, labels: str | Path | None = None) -> dict[str, Any]:
    """The task options the command line gives: a recogniser's alphabet file, a detector's COCO labels."""
    options: dict[str, Any] = {}
    if alphabet:
        try:
            options["alphabet"] = ["", *Path(alphabet).read_text(encoding="utf-8").splitlines(), " "]
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"--alphabet {alphabet}: cannot read it ({e})") from None
    if labels:
        options["coco_labels"] = str(labels)
    return options


def parse_axes(text: str | None) -> tuple[int, ...]:
    """'0,3' -> (0, 3)."""
    if not text:
        return ()
    try:
        axes = tuple(int(p) for p in text.split(","))
    except ValueError:
        raise SettingsError(f"--dynamic takes axis numbers like 0,3, got '{text}'") from None
    if any(a < 0 for a in axes) or len(set(axes)) != len(axes):
        raise SettingsError(f"--dynamic takes distinct axis numbers from 0, got '{text}'")
    return axes


def default_out_dir(model: Any, target: str) -> Path:
    if model is not None and not isinstance(model, (str, Path)):
        name = f"python_{type(model).__name__}"
    else:
        model = str(model) if model is not None else None
        name = Path(model).stem if model and ("/" in model or "." in model) else (model or "digits_cnn")
    return Path("runs") / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}-{target}"


@dataclass
class CompressResult(Mapping[str, Any]):
    """What compress() returns. It also reads like report.json (result["summary"], result["artifacts"]).

    Attributes:
        model: the compressed torch model (pruned / decomposed / fine-tuned; INT8 lives in the artifacts).
        report: report.json's content.
        out: the run folder.
    """

    model: Any
    report: dict[str, Any]
    out: Path

    @property
    def artifacts(self) -> list[Path]:
        """Paths of the final artifacts (verified ones carry `verification.passed` in the report)."""
        return [self.out / a["path"] for a in self.report["artifacts"]]

    @property
    def best(self) -> Path | None:
        """The artifact the summary's "after" describes: the fastest verified one within the quality budget."""
        path = self.report["summary"].get("artifact")
        return self.out / path if path else None

    @property
    def summary(self) -> dict[str, Any]:
        return self.report["summary"]

    def __getitem__(self, key: str) -> Any:
        return self.report[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.report)

    def __len__(self) -> int:
        return len(self.report)

    def __repr__(self) -> str:
        s = self.summary
        return (f"CompressResult({self.report.get('model')} -> {self.report.get('target')}, {self.out}: "
                f"{s.get('quality_metric')} {s.get('quality_before')} -> {s.get('quality_after')}, "
                f"best {s.get('artifact')})")


def compress(model: Any = None, target: str = "host", *, data: Any = None, recipe: str | dict | None = None,
             example_input: Any = None, input_shape: tuple[int, ...] | None = None, weights: str | None = None,
             max_quality_drop: float | None = None, threads: int | None = None, out: str | Path | None = None,
             device: str | None = None, overrides: dict[str, dict[str, Any]] | None = None, resume: bool = True,
             progress: Any = None, console: Any = None, trust_code: bool = False,
             dynamic: tuple[int, ...] | list[int] = (), task: str | None = None, metric: Any = None,
             metric_options: dict[str, Any] | None = None) -> CompressResult:
    """Runs a recipe on a model for a target and writes the run folder.

    Args:
        model: an nn.Module (with example_input or input_shape), a zoo name, a .onnx/.pt2 path, module:factory, or
            None for the built-in digits CNN. An nn.Module is copied; the copy is compressed.
        target: target name or .toml path.
        data: "digits", an image folder, an .npz, (x, y) or (x,) arrays, a dict with x/y[/x_test/y_test], a torch
            DataLoader yielding (x, y) or x batches, or None (the model's own data, else synthetic + agreement).
        recipe: "auto" (plan from target and data), a recipe name, YAML path or mapping; default: the target's.
        example_input: one input (N=1) for an nn.Module, to fix its input shape.
        input_shape: N,C,H,W when it cannot be inferred.
        weights: state-dict file for zoo models.
        max_quality_drop: the run's quality budget in points from the model as loaded (auto: default 1.0).
        threads: runtime threads (default: the target's).
        out: run folder (default runs/<model>-<target>).
        device: device URI to measure on (ssh://..., adb://..., node, chromium); None: this machine for host.
        overrides: {stage: {setting: value}} on top of the recipe (a stage the recipe lacks is an error).
        resume: reuse finished stages of an identical earlier run in `out`.
        progress: rich Progress for the stages' bars.
        trust_code: allow model sources that run code (module:factory, pickled .pt2 entries); see edgekit.untrusted.
        dynamic: axes of a torch model's input its artifacts keep dynamic (e.g. (0, 3): batch and width); a model
            file's own signature says which of its dimensions are dynamic.
        task: the quality metric's task (edgekit.quality: classify, detect, text-detect, text-recognize, segment,
            keypoints, embed, fidelity); None / "auto": from the output shapes.
        metric: the user's own metric, fn(outputs, labels) -> float (higher is better; an edgekit.quality.UserMetric
            to name it or give its unit), or "package.module:function" (imports code: needs trust_code). It drives
            the budget and every search, and report.json records its name.
        metric_options: the task's options (e.g. {"alphabet": [...]} for text-recognize, {"layout": "yolov5"}).
    """
    from edgekit.contract import check_facts
    from edgekit.devices.uri import device_for_report
    from edgekit.pipeline import RunContext, load_recipe, run_pipeline
    from edgekit.report import load_report
    from edgekit.runfolder import check_run_folder, input_identity

    tgt = load_target(target)
    out = Path(out) if out else default_out_dir(model, tgt.name)
    check_run_folder(out)  # before anything is loaded or written: never someone else's folder
    device_id = device_for_report(device)  # checks the URI now, not after the stages ran
    _check_device(tgt, device)
    recipe = recipe or tgt.default_recipe
    auto = recipe == "auto"
    rec = None if auto else load_recipe(recipe, overrides, first=("check",))  # bad orders fail before any loading
    if max_quality_drop is not None and max_quality_drop < 0:
        raise SettingsError(f"--max-quality-drop must be >= 0, got {max_quality_drop}")
    bundle, weights_id = _bundle(model, weights, input_shape, example_input, progress, trust_code)
    model_signature(bundle, tuple(dynamic))  # the loaded model's inputs and outputs, before anything changes it
    ds = _data(data, bundle)
    _check_import(bundle, ds)
    run_metric, metric_why = _metric(task, metric, metric_options, bundle, ds, trust_code)
    if bundle.weights.startswith("initialisation") and calibrate_batchnorm(bundle.module, ds.calibration(64)):
        bundle.weights += "; BatchNorm statistics set from 64 calibration inputs"
    budget = default_budget(run_metric) if auto and max_quality_drop is None else max_quality_drop
    plan = None
    if auto:
        rec, plan = _plan(bundle, ds, tgt, budget, overrides, run_metric)
    assert rec is not None
    native = bundle.without_torch
    check_facts([(s.name, s.contract) for s in rec.stages], labelled=ds.labelled, data_name=ds.name,
                torch_model=native is None, model_format=native.format if native else "",
                torch_blocker=native.blocker if native else "")
    if budget is None:
        quant = next((s for s in rec.stages if s.name == "quantize"), None)
        budget = quant.settings.max_quality_drop if quant else None
    threads = threads or tgt.threads
    if threads < 1:
        raise SettingsError(f"--threads must be at least 1, got {threads}")
    # Files are identified by content: data.npz replaced at the same path is new data.
    identity = input_identity(str(model) if isinstance(model, (str, Path)) else None,
                              str(data) if isinstance(data, (str, Path)) else None)
    base_fp = fingerprint(bundle.name, weights_id, bundle.input_shape, ds.name, ds.description, tgt.name, threads,
                          device, budget, bundle.signature.as_dict(), _metric_id(run_metric, metric_options), *identity)
    report = _new_report(bundle, ds, tgt, rec, threads, device_id, budget, plan, run_metric, metric_why)
    ctx = RunContext(out=out, target=tgt, bundle=bundle, data=ds, threads=threads, report=report, progress=progress,
                     device=device, console=console, budget=budget, metric=run_metric)
    run_pipeline(ctx, rec, base_fp, resume=resume)
    return CompressResult(model=bundle.module, report=load_report(out), out=out)


def _check_device(tgt: Any, device: str | None) -> None:
    """--device fits the target's kind, and a farm file is read and checked, before any stage runs (opening a
    device connects to nothing)."""
    if device:
        from edgekit.devices import latency_source, open_device

        latency_source(tgt, device)
        open_device(device, target=tgt).close()


def default_budget(metric: Any) -> float:
    """--recipe auto's budget when none is given: one point of a percentage, or the fidelity budget in dB."""
    from edgekit.quality import DEFAULT_BUDGET

    return DEFAULT_BUDGET.get(getattr(metric, "unit", "pts"), DEFAULT_BUDGET_PTS)


def _metric(task: str | None, user: Any, options: dict[str, Any] | None, bundle: ModelBundle, ds: DataBundle,
            trust_code: bool) -> tuple[Any, str]:
    """(the run's quality metric, why): the user's, the task's, or auto's choice from the output shapes."""
    from edgekit import quality

    if isinstance(user, str):
        user = quality.load_user_metric(user, trust_code)
    options = dict(options or {})
    if options.get("coco_labels"):  # target boxes of the held-out rows, in their order
        from edgekit.quality.detect import labels_from_coco

        if not ds.held_out_given:
            raise InputError("--labels: the COCO JSON lists the held-out inputs in order, so the data must give them "
                             "(an .npz with x_test)")
        ds.y_test = _object_rows(labels_from_coco(options.pop("coco_labels"), len(ds.x_test)))
    return quality.choose(task, bundle.signature, ds.y_test, options, user)


def _object_rows(items: list[Any]) -> Any:
    import numpy as np

    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def _metric_id(metric: Any, options: dict[str, Any] | None) -> str:
    """What the fingerprint knows of the metric: a changed metric re-runs every stage that scored with it."""
    fn = getattr(metric, "fn", None)
    code = getattr(getattr(fn, "__code__", None), "co_code", b"")
    return fingerprint(getattr(metric, "name", ""), getattr(metric, "task", ""), repr(sorted((options or {}).items())),
                       code.hex() if code else "")


def _new_report(bundle: ModelBundle, ds: DataBundle, tgt: Any, rec: Any, threads: int, device: str | None,
                budget: float | None, plan: dict | None, metric: Any, why: str) -> dict[str, Any]:
    from edgekit.importers.native import route
    from edgekit.report import new_report

    unit = getattr(metric, "unit", "pts")
    return new_report(model=bundle.name, target=tgt.name, weights=bundle.weights, input_shape=list(bundle.input_shape),
                      target_facts={k: v for k, v in asdict(tgt).items() if k != "runtimes"},
                      data={"name": ds.name, "description": ds.description, "quality_metric": metric.name,
                            "labelled": ds.labelled},
                      quality={"metric": metric.name, "task": metric.task, "unit": unit,
                               "higher_is_better": metric.higher_is_better, "labelled": metric.labelled, "why": why},
                      recipe=rec.as_dict(), threads=threads, device=device,
                      budget=None if budget is None else {"max_quality_drop": budget, "metric": metric.name,
                                                          "unit": unit},
                      plan=plan, route=route(bundle), signature=bundle.signature.as_dict(),
                      **({"import": bundle.import_info} if bundle.import_info else {}))


def _plan(bundle: ModelBundle, ds: DataBundle, tgt: Any, budget: float, overrides: dict | None,
          metric: Any) -> tuple[Any, dict]:
    from dataclasses import replace

    from edgekit import plan as planner
    from edgekit.pipeline import load_recipe

    # `--set export.formats=[...]` says which files the user wants: auto plans its techniques (quantisation,
    # sparse conversion, the joint search) for the runtimes of those formats only, and says so.
    wanted = ((overrides or {}).get("export") or {}).get("formats")
    kept = tuple(r for r in tgt.runtimes if isinstance(wanted, (list, tuple)) and r.format in wanted)
    facts = planner.gather(bundle.module, bundle.input_shape, ds, replace(tgt, runtimes=kept) if kept else tgt,
                           budget, native=bundle.without_torch, metric=metric)
    spec, decisions = planner.plan(facts)
    planned = {next(iter(s)) for s in spec["stages"]}
    for name in overrides or {}:
        if name not in planned:
            why = next((d["why"] for d in decisions if d["name"] == name), "not a technique auto plans")
            raise SettingsError(f"--set {name}.…: --recipe auto did not plan {name} ({why}); its stages: "
                                f"{', '.join(next(iter(s)) for s in spec['stages'])}")
    rec = load_recipe(spec, overrides, first=("check",))
    rec = type(rec)(rec.stages, "auto")
    only = f" Formats: {', '.join(dict.fromkeys(r.format for r in kept))} (--set export.formats)." if kept else ""
    return rec, {"summary": planner.describe(decisions, facts) + only, "techniques": decisions}


def _check_import(bundle: ModelBundle, ds: DataBundle) -> None:
    """A model imported from another tool's file is checked against that file's runtime before any stage runs;
    when the torch conversion disagrees, the file itself is compressed (the ONNX-native route) instead."""
    from edgekit.importers.native import use_native
    from edgekit.importers.onnx_check import ImportCheckError

    try:
        check_import(bundle, ds.calibration(64), f"calibration inputs of {ds.name}")
    except ImportCheckError as e:
        if bundle.native is None:
            raise
        use_native(bundle, str(e))


def _bundle(model: Any, weights: str | None, input_shape: tuple[int, ...] | None, example_input: Any,
            progress: Any, trust_code: bool = False) -> tuple[ModelBundle, str]:
    """(the model bundle, an id of its weights for the fingerprint)."""
    if model is None or isinstance(model, (str, Path)):
        bundle = load_model(None if model is None else str(model), weights, input_shape, progress, trust_code,
                            native=True)
        return bundle, sha256_cached(weights) if weights else bundle.weights
    import copy

    import numpy as np
    import torch

    if not isinstance(model, torch.nn.Module):
        raise InputError(f"model must be an nn.Module, a zoo name or a file, got {type(model).__name__}")
    if example_input is not None:
        x = example_input.detach().cpu().numpy() if isinstance(example_input, torch.Tensor) else np.asarray(
            example_input)
        shape = tuple(x.shape) if x.ndim == 4 else (1, *x.shape)
    elif input_shape is not None:
        shape = tuple(input_shape)
    else:
        raise InputError("an nn.Module needs example_input= (one input, N,C,H,W) or input_shape=")
    if len(shape) != 4 or shape[0] != 1:
        raise InputError(f"the example input must be one N=1 batch N,C,H,W; got shape {list(shape)}")
    module = copy.deepcopy(model).cpu().eval()
    h = fingerprint(*[(k, _tensor_hash(v)) for k, v in module.state_dict().items()])
    bundle = ModelBundle(module, f"python:{type(model).__name__}", shape, "given as an nn.Module", None)
    return bundle, h


def _tensor_hash(t: Any) -> str:
    import hashlib

    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def _data(data: Any, bundle: ModelBundle) -> DataBundle:
    """Resolves data= into a DataBundle of the model's input shape."""
    native = bundle.without_torch
    if native is not None and native.inputs:  # several inputs: synthetic per input, or an .npz per input name
        from edgekit.importers.native import input_specs

        if data is not None and not isinstance(data, (str, Path)):
            raise InputError("data= for a model with several inputs is an .npz path with one array per input name")
        return load_data(None if data is None else str(data), bundle.input_shape, None, inputs=input_specs(native))
    if data is None or isinstance(data, (str, Path)):
        return load_data(None if data is None else str(data), bundle.input_shape, bundle.default_data)
    if isinstance(data, dict):
        ds = from_arrays(data.get("x"), data.get("y"), data.get("x_test"), data.get("y_test"))
    elif isinstance(data, (tuple, list)) and 1 <= len(data) <= 2:
        ds = from_arrays(data[0], data[1] if len(data) == 2 else None)
    elif hasattr(data, "__iter__") and hasattr(data, "dataset"):
        ds = _from_loader(data)
    elif hasattr(data, "shape"):
        ds = from_arrays(data)
    else:
        raise InputError(f"data must be arrays, a DataLoader, or what --data takes; got {type(data).__name__}")
    expected = tuple(bundle.input_shape[1:])
    if tuple(ds.x_test.shape[1:]) != expected:
        raise InputError(f"data has inputs of shape {list(ds.x_test.shape[1:])} but the model expects "
                         f"{list(expected)}")
    return ds


def _from_loader(loader: Any) -> DataBundle:
    """Collects a torch DataLoader's batches: (x, y) tuples give labelled data, bare tensors unlabelled."""
    import numpy as np

    xs, ys = [], []
    for batch in loader:
        if isinstance(batch, (tuple, list)):
            xs.append(np.asarray(batch[0]))
            if len(batch) > 1:
                ys.append(np.asarray(batch[1]))
        else:
            xs.append(np.asarray(batch))
    if not xs:
        raise InputError("the DataLoader yielded no batches")
    if ys and len(ys) != len(xs):
        raise InputError("the DataLoader yields labels for some batches only")
    return from_arrays(np.concatenate(xs), np.concatenate(ys) if ys else None, name="dataloader",
                       what="a torch DataLoader")
