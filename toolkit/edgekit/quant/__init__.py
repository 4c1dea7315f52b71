"""INT8 quantisation: backend-neutral per-layer policies, backends (ONNX Runtime, LiteRT PT2E, NNCF), sensitivity and
NSGA-II policy search scored on latency measured in the artifact's own runtime. See docs/quantization.md."""
