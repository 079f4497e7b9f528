"""Running cases: strategies, forward passes, the rank worker, mlx.launch, the runner."""
