"""External strategies for bench.sh: one that every rank refuses at once (as exo's
strategies refuse a model they do not support) and one that shards as mlx-lm's
tensor parallel does, so the two runs differ only in whether the strategy raises."""


def unsupported(model, group):
    raise ValueError("unsupported model")


def tensor_parallel(model, group):
    model.shard(group)
    return model
