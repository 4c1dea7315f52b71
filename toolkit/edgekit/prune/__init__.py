"""Lottery-ticket pruning: iterative magnitude pruning with rewinding (imp), mask patterns (patterns), layer
selection with the target's sparse-inference rules (layers) and the stage's report (report)."""
