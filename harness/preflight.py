"""Preflight: the divisibility and shape rules of (config, strategy, ranks, quantization).

mlx-lm's `shard()` and `pipeline()` check almost nothing: a tensor-parallel degree that
does not divide the KV heads, an intermediate size or a quantization group fails later
with a reshape error deep in a forward, or silently truncates weights. Every rule below
was read off the installed mlx-lm's model files and is grounded by a test that runs the
violating config through the real, unguarded sharded forward on real ranks.

Values come from mlx-lm's own ModelArgs parsed from the config, so defaults and derived
fields are the ones the model is built with; the same code serves the zoo's tiny configs
and real checkpoints' config.json (nested `text_config`, `quantization` blocks).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, is_dataclass
from typing import Any

from harness.errors import HarnessError
from harness.models.mlx_lm_api import model_classes

PREFLIGHT_MAX_RANKS = 64
STRATEGY_NAMES = {"tp": "tensor parallel", "pp": "pipeline parallel"}


@dataclass(frozen=True)
class Violation:
    rule: str  # short id, e.g. "kv_heads_divisible"
    parameter: str  # config key (or product of keys), e.g. "num_key_value_heads"
    value: int | str  # the parameter's value; the model_type for "not supported"
    ranks: int
    max_ranks: int  # largest rank count <= 64 that satisfies the rule (1 if none)
    message: str  # one sentence: parameter, value, ranks, and max_ranks


@dataclass(frozen=True)
class _Context:
    strategy: str
    ranks: int
    bits: int | None
    group_size: int

    @property
    def label(self) -> str:
        return STRATEGY_NAMES[self.strategy]


def _largest(ok: Callable[[int], bool]) -> int:
    return max((n for n in range(1, PREFLIGHT_MAX_RANKS + 1) if ok(n)), default=1)


_TOKEN = re.compile(r"\*|//")


class _Params:
    """Reads rule parameters off mlx-lm's parsed args: dotted paths, `a*b`, `a//b`."""

    def __init__(self, args: Any):
        self.args = args

    def get(self, path: str) -> Any:
        value = self.args
        for part in path.split("."):
            if isinstance(value, Mapping):
                value = value.get(part)
            else:
                value = getattr(value, part, None)
            if value is None:
                break
        if path == "head_dim" and value is None:
            # The llama convention every family without an explicit head_dim follows.
            hidden, heads = self.get("hidden_size"), self.get("num_attention_heads")
            return hidden // heads if hidden and heads else None
        return value

    def value(self, expr: str) -> int | None:
        names = _TOKEN.split(expr)
        ops = _TOKEN.findall(expr)
        values = [self.get(name.strip()) for name in names]
        if any(not isinstance(v, int) or isinstance(v, bool) for v in values):
            return None
        result = values[0]
        for op, operand in zip(ops, values[1:], strict=True):
            result = result * operand if op == "*" else result // operand
        return result


# ---- rule kinds ----


def _violation(rule, value: int, ranks: int, best: int, need: str) -> Violation:
    """A Violation whose sentence is `need` plus the largest rank count that works."""
    message = f"{need}; the largest rank count that works for it is {best}."
    return Violation(rule.rule, rule.parameter, value, ranks, best, message)


@dataclass(frozen=True)
class Divides:
    """Every rank holds an equal share of `parameter` units: value % N == 0."""

    rule: str
    parameter: str
    unit: str
    when: Callable[[Any], bool] | None = None

    def check(self, params: _Params, ctx: _Context) -> Violation | None:
        value = params.value(self.parameter)
        if not value or value % ctx.ranks == 0:
            return None
        best = _largest(lambda n: value % n == 0)
        return _violation(
            self,
            value,
            ctx.ranks,
            best,
            f"{ctx.label} over {ctx.ranks} ranks needs {self.parameter} ({value}) to be "
            f"divisible by {ctx.ranks}, since every rank holds an equal share of the "
            f"{self.unit}",
        )


@dataclass(frozen=True)
class DividesOrRepeats:
    """Heads are split when there are at least N, else repeated N / heads times."""

    rule: str
    parameter: str
    unit: str
    when: Callable[[Any], bool] | None = None

    def check(self, params: _Params, ctx: _Context) -> Violation | None:
        value = params.value(self.parameter)
        N = ctx.ranks
        if not value or value % N == 0 or N % value == 0:
            return None
        best = _largest(lambda n: value % n == 0 or n % value == 0)
        return _violation(
            self,
            value,
            N,
            best,
            f"{ctx.label} over {N} ranks needs {self.parameter} ({value}) to be divisible "
            f"by {N} or to divide it, since the {self.unit} are split across ranks or "
            f"repeated on them",
        )


@dataclass(frozen=True)
class AtLeast:
    """Every rank gets at least one `unit`: value >= N."""

    rule: str
    parameter: str
    unit: str
    when: Callable[[Any], bool] | None = None

    def check(self, params: _Params, ctx: _Context) -> Violation | None:
        value = params.value(self.parameter)
        if value is None or value >= ctx.ranks:
            return None
        best = max(1, min(value, PREFLIGHT_MAX_RANKS))
        return _violation(
            self,
            value,
            ctx.ranks,
            best,
            f"{ctx.label} over {ctx.ranks} ranks needs {self.parameter} ({value}) to be "
            f"at least {ctx.ranks}, since every rank runs at least one {self.unit}",
        )


@dataclass(frozen=True)
class QuantGroups:
    """A quantized sharded-to-all layer splits its input: (in / N) % group_size == 0.

    Layers whose input is not a multiple of the group size are left unquantized by
    mlx_lm.utils.quantize_model, so they are exempt; an input that does not split
    evenly at all is already reported by the Divides rule on the same heads or units.
    """

    rule: str
    parameter: str  # the layer's input features
    layer: str
    when: Callable[[Any], bool] | None = None

    def check(self, params: _Params, ctx: _Context) -> Violation | None:
        value = params.value(self.parameter)
        gs = ctx.group_size
        N = ctx.ranks
        if ctx.bits is None or not value or value % gs or value % N or (value // gs) % N == 0:
            return None
        best = _largest(lambda n: (value // gs) % n == 0)
        return _violation(
            self,
            value,
            N,
            best,
            f"{ctx.bits}-bit {ctx.label} over {N} ranks splits the {self.layer} "
            f"input {self.parameter} ({value}) into slices of {value // N}, "
            f"not a multiple of the quantization group size {gs}",
        )


Rule = Divides | DividesOrRepeats | AtLeast | QuantGroups


# ---- which layers exist: rules for a kind of layer apply only if the model has one ----


def _any_layer(pred: Callable[[Any, int], bool]) -> Callable[[Any], bool]:
    return lambda a: any(pred(a, i) for i in range(a.num_hidden_layers))


def _no(pred: Callable[[Any, int], bool]) -> Callable[[Any, int], bool]:
    return lambda a, i: not pred(a, i)


def _deepseek_moe(a, i: int) -> bool:
    return (
        a.n_routed_experts is not None
        and i >= a.first_k_dense_replace
        and i % a.moe_layer_freq == 0
    )


def _glm4_moe(a, i: int) -> bool:  # also mistral4: no moe_layer_freq
    return a.n_routed_experts is not None and i >= a.first_k_dense_replace


def _kimi_k3_moe(a, i: int) -> bool:
    return (a.num_experts or 0) > 0 and i >= a.first_k_dense_replace and i % a.moe_layer_freq == 0


def _kimi_k3_linear(a, i: int) -> bool:
    return (i + 1) in (a.linear_attn_config or {}).get("kda_layers", ())


def _qwen3_moe(a, i: int) -> bool:
    return i not in a.mlp_only_layers and a.num_experts > 0 and (i + 1) % a.decoder_sparse_step == 0


def _qwen3_5_moe(a, i: int) -> bool:
    return a.num_experts > 0


def _qwen3_5_linear(a, i: int) -> bool:
    return (i + 1) % a.full_attention_interval != 0


def _exaone_moe(a, i: int) -> bool:
    return bool(a.is_moe_layer[i])


def _step3p5_moe(a, i: int) -> bool:
    if a.moe_layers_enum:
        return i in {int(x) for x in a.moe_layers_enum.strip().split(",")}
    return i >= 1


def _step3p5_sliding(a, i: int) -> bool:
    types = a.layer_types or []
    return bool(a.attention_other_setting) and i < len(types) and types[i] == "sliding_attention"


def _minimax_m3_moe(a, i: int) -> bool:
    return a.is_moe(i)


def _minimax_m3_sparse(a, i: int) -> bool:
    return a.is_sparse_attn(i)


def _untied(a) -> bool:
    return not a.tie_word_embeddings


# ---- rule builders ----


def _heads(parameter: str = "num_attention_heads", when=None, rule="heads_divisible"):
    return Divides(rule, parameter, "attention heads", when)


def _kv_heads(parameter: str = "num_key_value_heads", when=None, rule="kv_heads_divisible"):
    return Divides(rule, parameter, "KV heads", when)


def _o_proj(parameter: str, when=None, layer: str = "o_proj") -> QuantGroups:
    return QuantGroups(f"{layer}_quant_groups", parameter, layer, when)


def _mlp(rule: str, parameter: str, when=None) -> tuple[Rule, ...]:
    """An MLP split on its hidden units: gate/up all-to-sharded, down sharded-to-all."""
    return (
        Divides(rule, parameter, "MLP hidden units", when),
        QuantGroups("down_proj_quant_groups", parameter, "down_proj", when),
    )


def _moe(
    pred: Callable[[Any, int], bool],
    dense: str = "intermediate_size",
    routed: str = "moe_intermediate_size",
    shared: str | None = None,
) -> tuple[Rule, ...]:
    """Dense MLP layers where `pred` is false, experts (and shared experts) where true."""
    rules = (
        *_mlp("intermediate_divisible", dense, _any_layer(_no(pred))),
        *_mlp("moe_intermediate_divisible", routed, _any_layer(pred)),
    )
    if shared:
        rules += _mlp("shared_intermediate_divisible", shared, _any_layer(pred))
    return rules


_GQA = (_heads(), _kv_heads(), _o_proj("num_attention_heads*head_dim"))
_MLA = (_heads(), _o_proj("num_attention_heads*v_head_dim"))
_DENSE = (*_GQA, *_mlp("intermediate_divisible", "intermediate_size"))
_DEEPSEEK = (*_MLA, *_moe(_deepseek_moe, shared="n_shared_experts*moe_intermediate_size"))
_GLM4_MOE = (*_GQA, *_moe(_glm4_moe, shared="n_shared_experts*moe_intermediate_size"))
_QWEN3_5 = (
    _heads(),
    # shard() repeats k/v projections when ranks outnumber KV heads.
    DividesOrRepeats(
        "kv_heads_repeatable", "num_key_value_heads", "KV heads", _any_layer(_no(_qwen3_5_linear))
    ),
    _o_proj("num_attention_heads*head_dim", _any_layer(_no(_qwen3_5_linear))),
    Divides(
        "linear_key_heads_divisible",
        "linear_num_key_heads",
        "linear-attention key heads",
        _any_layer(_qwen3_5_linear),
    ),
    Divides(
        "linear_value_heads_divisible",
        "linear_num_value_heads",
        "linear-attention value heads",
        _any_layer(_qwen3_5_linear),
    ),
    _o_proj(
        "linear_num_value_heads*linear_value_head_dim",
        _any_layer(_qwen3_5_linear),
        layer="out_proj",
    ),
    # An untied lm_head is sharded over the vocabulary.
    Divides("vocab_divisible", "vocab_size", "vocabulary", _untied),
    *_moe(_qwen3_5_moe, shared="shared_expert_intermediate_size"),
)

# Keyed by the mlx-lm module that a config's model_type resolves to.
TP_RULES: dict[str, tuple[Rule, ...]] = {
    **dict.fromkeys(("llama", "qwen3", "ministral3", "iquestloopcoder"), _DENSE),
    # qwen2 has no head_dim: heads are hidden_size / num_attention_heads wide.
    "qwen2": (
        _heads(),
        _kv_heads(),
        _o_proj("hidden_size"),
        *_mlp("intermediate_divisible", "intermediate_size"),
    ),
    # gpt-oss and MiniMax name the expert width intermediate_size; all layers are MoE.
    "gpt_oss": _DENSE,
    "minimax": _DENSE,
    "qwen3_moe": (*_GQA, *_moe(_qwen3_moe)),
    "exaone_moe": (*_GQA, *_moe(_exaone_moe, shared="num_shared_experts*moe_intermediate_size")),
    "glm4_moe": _GLM4_MOE,
    "solar_open": _GLM4_MOE,
    "step3p5": (
        _heads(),
        _kv_heads("num_attention_groups"),
        _o_proj("num_attention_heads*head_dim"),
        # Sliding-window layers carry their own head counts.
        _heads("attention_other_setting.num_attention_heads", _any_layer(_step3p5_sliding)),
        _kv_heads("attention_other_setting.num_attention_groups", _any_layer(_step3p5_sliding)),
        _o_proj(
            "attention_other_setting.num_attention_heads*head_dim",
            _any_layer(_step3p5_sliding),
        ),
        *_moe(_step3p5_moe, shared="share_expert_dim"),
    ),
    "minimax_m3_vl": (
        *_GQA,
        _heads("index_n_heads", _any_layer(_minimax_m3_sparse), rule="index_heads_divisible"),
        *_moe(_minimax_m3_moe, "dense_intermediate_size", "intermediate_size"),
        *_mlp(
            "shared_intermediate_divisible",
            "shared_intermediate_size",
            _any_layer(_minimax_m3_moe),
        ),
    ),
    "muse_spark": (
        *_GQA,
        Divides("vocab_divisible", "vocab_size", "vocabulary"),
        # shard_experts_inplace slices without checking: a remainder is silently dropped.
        *_mlp("moe_intermediate_divisible", "moe_intermediate_size"),
    ),
    **dict.fromkeys(("qwen3_5", "qwen3_5_moe", "prism_hadamard_qwen35"), _QWEN3_5),
    **dict.fromkeys(
        ("deepseek_v2", "deepseek_v3", "deepseek_v32", "glm_moe_dsa", "glm4_moe_lite", "kimi_k25"),
        _DEEPSEEK,
    ),
    "mistral4": (*_MLA, *_moe(_glm4_moe, shared="n_shared_experts*moe_intermediate_size")),
    "deepseek_v41": (
        _heads(),
        # A rank keeps whole output groups (o_a_proj is block diagonal per group).
        Divides("o_groups_divisible", "o_groups", "attention output groups"),
        _o_proj("o_groups*o_lora_rank", layer="o_b_proj"),
        # Routed and shared experts both use moe_intermediate_size.
        *_mlp("moe_intermediate_divisible", "moe_intermediate_size"),
    ),
    "kimi_k3": (
        _heads(when=_any_layer(_no(_kimi_k3_linear))),
        _o_proj("num_attention_heads*v_head_dim", _any_layer(_no(_kimi_k3_linear))),
        _heads(
            "linear_attn_config.num_heads",
            _any_layer(_kimi_k3_linear),
            rule="linear_heads_divisible",
        ),
        _o_proj(
            "linear_attn_config.num_heads*linear_attn_config.head_dim",
            _any_layer(_kimi_k3_linear),
        ),
        *_moe(_kimi_k3_moe, shared="num_shared_experts*moe_intermediate_size"),
    ),
    **dict.fromkeys(
        ("longcat_flash", "longcat_flash_ngram"),
        (
            *_MLA,
            *_mlp("intermediate_divisible", "ffn_hidden_size"),
            *_mlp("moe_intermediate_divisible", "expert_ffn_hidden_size"),
        ),
    ),
}
# A model type with shard() but no entry: the shape most of mlx-lm's shard() share.
DEFAULT_TP_RULES: tuple[Rule, ...] = (
    *_DENSE,
    *_mlp("moe_intermediate_divisible", "moe_intermediate_size"),
)

_LAYERS = AtLeast("layers_at_least_ranks", "num_hidden_layers", "decoder layer")
PP_RULES: dict[str, tuple[Rule, ...]] = {
    # kimi_k3's own pipeline() lets a rank hold no layers and still runs correctly.
    "kimi_k3": (),
    # Stages hold whole groups of layer_group_size layers, each with an MLA layer.
    "bailing_hybrid": (
        AtLeast(
            "layer_groups_at_least_ranks",
            "num_hidden_layers//layer_group_size",
            "group of layer_group_size layers",
        ),
    ),
}
DEFAULT_PP_RULES: tuple[Rule, ...] = (_LAYERS,)


# ---- parsing the config through mlx-lm ----


# Model types whose ModelArgs keep text_config a dict that only Model parses.
_TEXT_CONFIG_DICT = {"qwen3_5", "qwen3_5_moe", "prism_hadamard_qwen35"}


def _text_args(args: Any, module: str) -> Any:
    """The language model's args: multimodal wrappers keep them under text/text_config."""
    if module in _TEXT_CONFIG_DICT:
        from mlx_lm.models.qwen3_5 import TextModelArgs

        return TextModelArgs.from_dict(dict(args.text_config))
    for name in ("text", "text_config"):
        inner = getattr(args, name, None)
        if is_dataclass(inner):
            return inner
    return args


def _quantization(config: Mapping, bits: int | None, group_size: int) -> tuple[int | None, int]:
    """The bits and group size to check: the caller's, else a checkpoint's own block."""
    if bits is not None:
        return bits, group_size
    block = config.get("quantization") or config.get("quantization_config") or {}
    if isinstance(block, Mapping) and "bits" in block and "group_size" in block:
        return int(block["bits"]), int(block["group_size"])
    return None, group_size


def _parse(config: Mapping) -> tuple[type | None, Any, str]:
    """(Model class, parsed args, mlx-lm module name); no class for an unknown type."""
    if "model_type" not in config:
        raise HarnessError("config has no model_type, so its sharding rules are unknown")
    # Some ModelArgs mutate nested dicts (rope_parameters) in place.
    config = copy.deepcopy(dict(config))
    try:
        model_cls, args_cls = model_classes(config)
    except (ValueError, SystemExit):
        return None, None, config["model_type"]
    try:
        args = args_cls.from_dict(config)
    except Exception as error:  # a config mlx-lm cannot build is the user's to fix
        raise HarnessError(
            f"mlx-lm cannot parse this {config['model_type']} config: {error}"
        ) from None
    return model_cls, args, model_cls.__module__.rsplit(".", 1)[-1]


def _supports(model_cls: type, args: Any, strategy: str) -> bool:
    if strategy == "tp":
        return callable(getattr(model_cls, "shard", None))
    # As mlx-lm's own sharded_load decides: build lazily (no weights are materialized)
    # and look for pipeline() on the inner model, which only an instance reveals.
    try:
        model = model_cls(args)
    except Exception as error:
        raise HarnessError(f"mlx-lm cannot build a model from this config: {error}") from None
    return callable(getattr(getattr(model, "model", None), "pipeline", None))


def _unsupported(model_type: str, ctx: _Context, known: bool) -> Violation:
    import mlx_lm

    method = "shard()" if ctx.strategy == "tp" else "model.model.pipeline()"
    reason = f"its model has no {method}" if known else "it has no model of that type"
    return Violation(
        f"{ctx.strategy}_supported",
        "model_type",
        model_type,
        ctx.ranks,
        1,
        f"{ctx.label} is not supported for model_type '{model_type}' by the "
        f"installed mlx-lm {mlx_lm.__version__}, since {reason}; the largest rank count "
        f"that works for it is 1.",
    )


def check(
    config: Mapping,
    strategy: str,
    ranks: int,
    quant: int | None = None,
    group_size: int = 32,
) -> list[Violation]:
    """Every rule the (config, strategy, ranks, quantization) combination breaks.

    `none` and external strategies have no rules (what an external strategy needs is
    unknowable here); one rank never violates anything.
    """
    if ranks < 1:
        raise HarnessError(f"ranks must be at least 1, got {ranks}")
    if ranks == 1 or strategy not in STRATEGY_NAMES:
        return []
    bits, group_size = _quantization(config, quant, group_size)
    ctx = _Context(strategy, ranks, bits, group_size)
    model_cls, args, module = _parse(config)
    if model_cls is None:
        return [_unsupported(module, ctx, known=False)]
    if not _supports(model_cls, args, strategy):
        return [_unsupported(config["model_type"], ctx, known=True)]
    if strategy == "tp":
        rules = TP_RULES.get(module, DEFAULT_TP_RULES)
    else:
        rules = PP_RULES.get(module, DEFAULT_PP_RULES)
    text = _text_args(args, module)
    params = _Params(text)
    found = []
    for rule in rules:
        if rule.when is not None and not rule.when(text):
            continue
        violation = rule.check(params, ctx)
        if violation is not None:
            found.append(violation)
    return found


def require(
    config: Mapping,
    strategy: str,
    ranks: int,
    quant: int | None = None,
    group_size: int = 32,
) -> None:
    """Raise HarnessError with the first violation's sentence, if there is one."""
    violations = check(config, strategy, ranks, quant, group_size)
    if violations:
        raise HarnessError(violations[0].message)
