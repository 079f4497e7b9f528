"""Deliberately broken sharding strategies, each with the `fn(model, group)` interface a
user's own strategy has. They are the harness's evidence that it catches what it exists to
catch: tests and `harness selftest` run them and check the verdict and the diagnosis."""
