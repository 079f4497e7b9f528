"""The golden-output service: datasette over harness SQLite files and the goldens directory.

Read-only and on loopback by default. It imports only `harness.records` (never mlx, mlx-lm
or the run pipeline): a machine without MLX can serve and browse results.
"""
