"""harness: correctness-regression tests and goldens for sharded MLX inference."""

__version__ = "0.1.0"
