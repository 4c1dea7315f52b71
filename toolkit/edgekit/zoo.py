"""Model sources: the built-in digits CNN, zoo names (torchvision, timm), .onnx and .pt2 files, factories.

A zoo name never downloads weights: they come from `--weights FILE` (loaded with weights_only=True) or stay at the
architecture's initialisation, and `ModelBundle.weights` says which.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit.errors import InputError, first_line, unknown
from edgekit.signature import from_tflite, onnx_file_signature

if TYPE_CHECKING:
    import torch.nn as nn

DEFAULT_MODEL = "edgekit:digits_cnn"
DIGITS_SHAPE = (1, 1, 8, 8)
_DIGITS_SEED = 0
_DIGITS_EPOCHS = 40
_DIGITS_CACHE_VERSION = "v1"
_OTHER_MODEL_FILES = {".pb", ".h5", ".keras", ".pth", ".pt", ".caffemodel", ".mlmodel", ".engine"}


@dataclass
class ModelBundle:
    """A model ready for the pipeline."""

    module: nn.Module
    name: str  # what the report calls it, e.g. "torchvision:mobilenet_v2"
    input_shape: tuple[int, ...]
    weights: str  # where the weights came from: "trained on digits (cached)", "file:<path>", "initialisation"
    default_data: str | None = None  # data spec the model was made for, e.g. "digits"
    num_classes: int | None = None
    import_info: dict[str, Any] | None = None  # how a file from another tool was imported (importers/), if it was
    # The model as a file its own runtime runs (importers.native.NativeModel), for .onnx and .tflite models. When
    # `module` is this object, there is no torch model and the native route runs (importers.native.route).
    native: Any = None
    # The model's inputs and outputs as loaded (edgekit.signature): read from the file, or given to a torch model
    # by model_signature(); every artifact keeps it where its format can.
    signature: Any = None
    source_format: str = ""  # "onnx" / "tflite" / "pt2" for a model file, "" otherwise

    @property
    def without_torch(self) -> Any:
        """The native model when there is no torch model (the native route runs), else None."""
        return self.native if self.native is not None and self.module is self.native else None


def cache_dir() -> Path:
    d = Path(os.environ.get("EDGEKIT_CACHE", Path.home() / ".cache" / "edgekit"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def digits_cnn(num_classes: int = 10) -> nn.Module:
    """The built-in default architecture: a small CNN for 1x8x8 digit images."""
    import torch.nn as nn

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        *block(1, 16),
        *block(16, 32),
        nn.MaxPool2d(2),
        *block(32, 64),
        nn.Conv2d(64, 64, 1, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, num_classes),
    )


def digits_mlp(num_classes: int = 10) -> nn.Module:
    """LeNet-300-100 shape on the 8x8 digits (64-300-100-10)."""
    import torch.nn as nn

    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, num_classes)
    )


def trained_digits_cnn(progress: Any = None) -> nn.Module:
    """The default model, trained once on the digits train split with a fixed seed and cached."""
    import torch

    from edgekit import data, train

    path = cache_dir() / f"digits_cnn-{_DIGITS_CACHE_VERSION}-seed{_DIGITS_SEED}.pt"
    torch.manual_seed(_DIGITS_SEED)
    model = digits_cnn()
    if path.is_file():
        try:
            model.load_state_dict(torch.load(path, weights_only=True))
            return model.eval()
        except Exception:  # a stale or damaged cache entry is retrained, never trusted
            path.unlink(missing_ok=True)
    ds = data.digits()
    train.fit(model, ds.x_train, ds.y_train, epochs=_DIGITS_EPOCHS, lr=3e-3, seed=_DIGITS_SEED, progress=progress,
              description="training the default digits CNN (once, cached)")
    from edgekit.fileio import atomic_path

    with atomic_path(path) as tmp:
        torch.save(model.state_dict(), tmp)
    return model.eval()


def list_zoo(filter_text: str = "") -> list[str]:
    """Zoo names: built-ins, torchvision classification models and timm models."""
    names = [DEFAULT_MODEL, "edgekit:digits_mlp"]
    import torchvision

    names += [f"torchvision:{n}" for n in torchvision.models.list_models(module=torchvision.models)]
    try:
        import timm

        names += [f"timm:{n}" for n in timm.list_models()]
    except ImportError:
        pass
    f = filter_text.lower()
    return [n for n in names if f in n.lower()]


def load_model(spec: str | None, weights: str | None = None, input_shape: tuple[int, ...] | None = None,
               progress: Any = None, trust_code: bool = False, native: bool = False) -> ModelBundle:
    """Resolves MODEL as the CLI takes it.

    Args:
        spec: None (built-in default), a zoo name, a .onnx, .tflite or .pt2 path, or `package.module:factory`.
        weights: optional state-dict file, loaded with weights_only=True.
        input_shape: overrides the inferred input shape (N,C,H,W).
        progress: a rich Progress for long steps.
        trust_code: allow what runs code: importing a factory, pickled entries in a .pt2 (edgekit.untrusted).
        native: accept a model that has no torch form (a .tflite file, an ONNX file with an operator onnx2torch
            lacks): its `module` is then an importers.native.NativeModel. Without it, such models are errors.
    """
    spec = spec or DEFAULT_MODEL
    if isinstance(input_shape, dict) and not spec.endswith(".onnx"):
        if len(input_shape) != 1:
            raise InputError(f"--input-shape names {len(input_shape)} inputs; {spec} has one input (named shapes of "
                             "several inputs are for .onnx files)")
        input_shape = next(iter(input_shape.values()))
    if spec.endswith(".onnx"):
        bundle = _load_onnx(Path(spec), input_shape, native)
    elif spec.lower().endswith(".tflite"):
        bundle = _load_tflite(Path(spec), input_shape, native)
    elif spec.endswith(".pt2"):
        bundle = _load_pt2(Path(spec), trust_code)
    elif spec.startswith("edgekit:"):
        bundle = _load_builtin(spec, weights, progress)
    elif spec.startswith("timm:"):
        bundle = _load_timm(spec[5:])
    elif Path(spec).is_file() or Path(spec).suffix.lower() in _OTHER_MODEL_FILES:
        # A file is never a zoo name: say what it is rather than suggest torchvision names.
        raise InputError(f"cannot read model '{spec}': edgekit compress takes .onnx, .tflite and .pt2 model files, "
                         "zoo names or module:factory")
    elif spec.startswith("torchvision:") or (":" not in spec and "/" not in spec):
        bundle = _load_torchvision(spec.removeprefix("torchvision:"))
    elif ":" in spec:
        bundle = _load_factory(spec, input_shape, trust_code)
    else:
        raise InputError(f"cannot read model '{spec}': expected a zoo name, a .onnx or .pt2 file, or module:factory")
    if weights and bundle.without_torch is not None:
        raise InputError(f"--weights: {spec} has no torch model to load a state dict into")
    if weights and not spec.startswith("edgekit:digits_cnn"):
        _load_weights(bundle, Path(weights))
    if input_shape and not isinstance(input_shape, dict):
        bundle.input_shape = tuple(input_shape)
    _check_input_shape(bundle)
    return bundle


def _load_builtin(spec: str, weights: str | None, progress: Any) -> ModelBundle:
    if spec == DEFAULT_MODEL:
        if weights:
            module = digits_cnn()
            bundle = ModelBundle(module, spec, DIGITS_SHAPE, "", "digits", 10)
            _load_weights(bundle, Path(weights))
            return bundle
        return ModelBundle(trained_digits_cnn(progress), spec, DIGITS_SHAPE,
                           f"trained on digits by edgekit (seed {_DIGITS_SEED}, cached)", "digits", 10)
    if spec == "edgekit:digits_mlp":
        import torch

        # Seeded like the other zoo initialisations, so that two runs (e.g. a resumed prune) start identically.
        torch.manual_seed(_DIGITS_SEED)
        return ModelBundle(digits_mlp().eval(), spec, DIGITS_SHAPE,
                           f"initialisation (untrained; seed {_DIGITS_SEED})", "digits", 10)
    raise unknown("model", spec, [DEFAULT_MODEL, "edgekit:digits_mlp"], "Run `edgekit zoo` to list models")


def _load_torchvision(name: str) -> ModelBundle:
    import torch
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    if name not in names:
        raise unknown("model", f"torchvision:{name}", [f"torchvision:{n}" for n in names],
                      "Run `edgekit zoo --filter NAME` to search")
    torch.manual_seed(0)
    module = torchvision.models.get_model(name, weights=None).eval()
    shape = (1, 3, 299, 299) if name == "inception_v3" else (1, 3, 224, 224)
    return ModelBundle(module, f"torchvision:{name}", shape, "initialisation (no weights given; seed 0)", None, 1000)


def _load_timm(name: str) -> ModelBundle:
    import timm
    import torch

    if not timm.is_model(name):
        raise unknown("model", f"timm:{name}", [f"timm:{n}" for n in timm.list_models()],
                      "Run `edgekit zoo --filter NAME` to search")
    torch.manual_seed(0)
    module = timm.create_model(name, pretrained=False).eval()
    shape = (1, *module.default_cfg.get("input_size", (3, 224, 224)))
    return ModelBundle(module, f"timm:{name}", shape, "initialisation (no weights given; seed 0)", None,
                       getattr(module, "num_classes", None))


def _load_factory(spec: str, input_shape: tuple[int, ...] | None, trust_code: bool) -> ModelBundle:
    import torch.nn as nn

    from edgekit.untrusted import check_factory

    check_factory(spec, trust_code)
    mod_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as e:
        raise InputError(f"cannot import model factory '{spec}': {e}") from None
    module = factory()
    if not isinstance(module, nn.Module):
        raise InputError(f"'{spec}' returned {type(module).__name__}, not a torch.nn.Module")
    shape = input_shape or getattr(module, "input_shape", None)
    if shape is None:
        raise InputError(f"cannot infer the input shape of '{spec}'; pass --input-shape, e.g. --input-shape 1,3,224,224")
    return ModelBundle(module.eval(), spec, tuple(shape), "as built by the factory")


def _load_onnx(path: Path, input_shape: tuple[int, ...] | None, native: bool) -> ModelBundle:
    """An ONNX file from any exporter, through the import pass (edgekit.importers.onnx); the check against ONNX
    Runtime runs later, on calibration inputs (importers.check_import). With `native`, a file onnx2torch cannot
    convert becomes a native model (importers.native) instead of an error."""
    from edgekit.importers import native as native_models
    from edgekit.importers.onnx import UnsupportedOperator, import_onnx

    if path.is_file():
        sig = onnx_file_signature(path) if _readable_onnx(path) else None
        if sig is not None and (len(sig.inputs) > 1 or not sig.inputs[0].is_float):
            if not native:
                raise InputError(f"{path}: a model with several (or non-float) inputs has no torch form here; "
                                 "`edgekit compress` takes it as the file itself")
            model = native_models.load_onnx_inputs(path, sig, input_shape)
            bundle = ModelBundle(model, str(path), model.input_shape, f"file:{path}", import_info=model.info,
                                 native=model, signature=sig, source_format="onnx")
            native_models.use_native(bundle, f"{path.name} has {len(sig.inputs)} inputs "
                                             f"({', '.join(f'{t.name} {t.dtype}' for t in sig.inputs)}): edgekit "
                                             f"compresses such models as the file itself")
            return bundle
        if isinstance(input_shape, dict) and sig is not None:
            name = sig.inputs[0].name
            if set(input_shape) != {name}:
                raise InputError(f"--input-shape names {sorted(input_shape)}; {path.name}'s input is '{name}'")
            input_shape = input_shape[name]
    try:
        imported = import_onnx(path, input_shape)
    except UnsupportedOperator as e:
        if not native:
            raise
        model = native_models.from_onnx(path, e.info)
        bundle = ModelBundle(model, str(path), model.input_shape, f"file:{path}", import_info=e.info, native=model,
                             signature=onnx_file_signature(path), source_format="onnx")
        native_models.use_native(bundle, str(e), native_models.blocked_by(e))
        return bundle
    module = imported.module if imported.batched else _per_sample(imported.module)
    return ModelBundle(module, str(path), imported.input_shape, f"file:{path}", import_info=imported.info,
                       native=native_models.from_onnx(path, imported.info),
                       signature=onnx_file_signature(path), source_format="onnx")


def _readable_onnx(path: Path) -> bool:
    try:
        onnx_file_signature(path)
        return True
    except Exception:  # the import pass says what is wrong with the file, in one line
        return False


def _load_tflite(path: Path, input_shape: tuple[int, ...] | None, native: bool) -> ModelBundle:
    """A float .tflite file: always a native model (edgekit does not convert TFLite to torch)."""
    from edgekit.importers import native as native_models

    if not native:
        raise InputError(f"{path}: a .tflite model has no torch form; `edgekit compress` and `edgekit quantize` "
                         "take it")
    model, info = native_models.load_tflite(path, input_shape)
    bundle = ModelBundle(model, str(path), model.input_shape, f"file:{path}", import_info=info, native=model,
                         signature=from_tflite(path), source_format="tflite")
    native_models.use_native(bundle, f"{path.name} is a TFLite file: edgekit does not convert TFLite to torch")
    return bundle


def _per_sample(module: nn.Module) -> nn.Module:
    """Wraps a graph traced at batch 1 (a .onnx or .pt2 file) so that batches run one sample at a time.

    Exporting the wrapper at batch 1 traces straight through to the inner graph, so artifacts are unchanged.
    """
    import torch

    class PerSample(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def train(self, mode: bool = True) -> PerSample:
            # A torch.export program's module() refuses train()/eval(); it has no mode to switch anyway.
            self.training = mode
            try:
                self.inner.train(mode)
            except NotImplementedError:
                pass
            return self

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.shape[0] == 1:
                return self.inner(x)
            return torch.cat([self.inner(x[i:i + 1]) for i in range(x.shape[0])])

    return PerSample(module).eval()


def _load_pt2(path: Path, trust_code: bool) -> ModelBundle:
    if not path.is_file():
        raise InputError(f"model file not found: {path}")
    import io
    import logging

    import torch

    from edgekit.untrusted import check_pt2

    data = path.read_bytes()  # checked and loaded from the same bytes: the file cannot change in between
    if not trust_code:
        check_pt2(data, path)
    export_log = logging.getLogger("torch.export")
    level = export_log.level
    export_log.setLevel(logging.CRITICAL)  # torch logs a traceback before raising; the user gets our one line
    try:
        ep = torch.export.load(io.BytesIO(data))
    except Exception as e:
        raise InputError(f"{path} is not a readable torch.export program ({first_line(e, 200)}); is the file complete?") from None
    finally:
        export_log.setLevel(level)
    user_inputs = [s for s in ep.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    shape: tuple[int, ...] = ()
    if len(user_inputs) == 1:
        node = next(n for n in ep.graph.nodes if n.op == "placeholder" and n.name == user_inputs[0].arg.name)
        val = node.meta.get("val")
        if val is not None and all(isinstance(d, int) for d in val.shape):
            shape = tuple(val.shape)
    elif len(user_inputs) != 1:
        raise InputError(f"{path}: edgekit supports models with one input; this one has {len(user_inputs)}")
    bundle = ModelBundle(_per_sample(ep.module()), str(path), shape, f"file:{path}", source_format="pt2")
    if shape:  # a program exported at static shapes: its artifacts keep them
        bundle.signature = model_signature(bundle)
    return bundle


def _load_weights(bundle: ModelBundle, path: Path) -> None:
    from edgekit.fileio import load_state

    state = load_state(path, "weights file", InputError)
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    try:
        bundle.module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise InputError(f"{path} does not match {bundle.name}: {first_line(e, 200)}") from None
    bundle.weights = f"file:{path}"


def _check_input_shape(bundle: ModelBundle) -> None:
    if not bundle.input_shape or any(s <= 0 for s in bundle.input_shape):
        raise InputError(f"cannot infer the input shape of {bundle.name}; pass --input-shape, e.g. --input-shape 1,3,224,224")


def model_signature(bundle: ModelBundle, dynamic: tuple[int, ...] = ()) -> Any:
    """The bundle's signature: the file's, or for a torch model its forward()'s names with one output per returned
    tensor, static but for the `dynamic` axes the user declares (edgekit.signature.for_torch), from one forward
    pass at the input shape.

    Raises:
        SettingsError: `dynamic` for a model file (its own signature says which dimensions are dynamic), or an axis
            the input does not have.
    """
    from edgekit.errors import SettingsError

    if dynamic and bundle.source_format in ("onnx", "tflite"):
        raise SettingsError(f"--dynamic applies to torch models; {bundle.name} is a .{bundle.source_format} file "
                            f"whose own signature says which dimensions are dynamic")
    bad = [a for a in dynamic if not 0 <= a < len(bundle.input_shape)]
    if bad:
        raise SettingsError(f"--dynamic: the input has {len(bundle.input_shape)} dimensions, no axis {bad[0]}")
    if bundle.signature is not None and not dynamic:
        return bundle.signature
    import torch

    from edgekit.signature import for_torch

    with torch.no_grad():
        out = bundle.module(torch.zeros(bundle.input_shape))
    outs = list(out.values()) if isinstance(out, dict) else list(out) if isinstance(out, (tuple, list)) else [out]
    bundle.signature = for_torch(bundle.module, [tuple(bundle.input_shape)],
                                 [(tuple(o.shape), str(o.dtype).removeprefix("torch.")) for o in outs],
                                 dynamic=tuple(dynamic))
    return bundle.signature


def calibrate_batchnorm(module: nn.Module, x: Any, batch_size: int = 16) -> bool:
    """Sets BatchNorm running statistics from inputs `x` (cumulative average); returns whether any BN existed.

    An untrained zoo model in eval mode has BN statistics mean 0 / var 1, which with its initialisation makes
    activations vanish layer by layer (mobilenet_v2's logits come out near 1e-9): every error, agreement and
    quantisation range would then be meaningless. Real statistics make an untrained model behave like a trained
    one numerically, which is what compression studies of untrained models need. The report says it was done.
    """
    import torch

    bns = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return False
    saved = {m: m.momentum for m in bns}
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over all batches
    module.train()
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            module(torch.as_tensor(x[i:i + batch_size]))
    for m, mom in saved.items():
        m.momentum = mom
    module.eval()
    return True
