"""Results of runs: outputs, case results, comparison, goldens, the store, provenance.

Imports only numpy, sqlite-utils and the standard library (plus the leaf modules
`harness.case` and `harness.errors`): reading results never loads mlx or mlx-lm."""
