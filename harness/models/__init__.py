"""Building models: deterministic weights, tiny zoo models, checkpoints on disk."""
