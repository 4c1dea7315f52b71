"""Joint pruning + quantisation search on measured latency: per channel group a width (Torch-Pruning), per layer a
precision (FP32 / INT8) and, where the target's runtime runs sparse weights, an unstructured sparsity; scored on
quality, latency in the artifact's own runtime and size (edgekit.joint.search.search_joint)."""
