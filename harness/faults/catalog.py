"""The fault catalog: every broken strategy the harness ships, with the verdict and the
diagnosis it must produce, and the correct-but-different controls it must pass.

An entry names its strategy (`package.module:function`, the interface users have), the bug
class it stands for (README, "Proving the harness catches bugs"), the expected status and
diagnosis substrings, the layer and sub-block it breaks, and which architectures it
applies to: a predicate over the zoo's `Arch` and `Support`, helped by a structural probe
of the tiny model (does layer 1 have stacked experts, shared experts, a biased expert down
projection; does layer 2 have a GatedDeltaNet, a KV-head count; does the pipeline take a
split).

`representative` is the default subset the selftest runs: one architecture per
structural family the fault touches (GQA attention with plain experts: qwen3_moe; MLA
with shared experts: deepseek_v3; biases and sinks: gpt_oss; linear attention:
qwen3_5_moe; a fault of a shape class runs at its shape): 50 cases, about 30 s on 2
local ranks of an otherwise idle 2-core machine before the 2,100-token prompt of
`past_prefill_step` (three long prefills, about 10-15 s more there). `harness selftest
--all-archs` runs every architecture a fault applies to (about 460 cases, several minutes there).
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import mlx.nn as nn
from mlx_lm.models.cache import make_prompt_cache
from mlx_lm.models.pipeline import PipelineMixin

from harness.errors import HarnessError
from harness.faults import parts
from harness.faults import shape_bugs as shape_faults
from harness.models.mlx_lm_api import model_classes
from harness.records import diagnose
from harness.run.rank.forward import decoder_layers
from harness.status import CaseStatus
from harness.suites import parse_precision
from harness.zoo import ARCHS, Arch, Support, config_copy, support

# Bug classes, one broken strategy each (README, "Proving the harness catches bugs").
WRONG_AXIS = "stacked expert weights sliced on the wrong axis"
UNSHARDED_SUM = "all_sum over an output that was never sharded"
FUSED_SPLIT = "fused projection split contiguously instead of per segment"
SATURATING = "head-parallel mis-slice that saturates the output"
HEADS_NOT_DIVIDED = "head count not divided with its projection (crash)"
MISSING_SUM = "no all_sum after a row-parallel projection"
RANK_ORDER = "rank order swapped"
PIPELINE = "pipeline rank runs the wrong layers"
DECODE_ONLY = "bug only in decode steps"
SMALL = "small perturbation of one expert on one rank"
NON_FINITE = "non-finite value from an uninitialised buffer"
# Shape classes: bugs the short shape (two 8-token prompts, one prefill call) never takes.
PREFILL_CHUNK = "corruption past the first prefill chunk"
TOKEN_COUNT = "a path taken only above a token count"
BATCH_ONE = "a path taken only at batch 1"
WINDOW = "wrong once a rotating cache is full"
PADDING = "padding not masked in a batch of mixed lengths"
# Production conditions: bugs that need bf16, a long prompt or a second request.
BF16_ONLY = "a path taken only with bf16 activations"
BF16_FEW = "a bf16-only path wrong at a few positions"
PAST_PREFILL_STEP = "corruption past one prefill step (2,048 tokens)"
STATE_CARRIED = "state carried from one request into the next"
# Serving: bugs only a scenario reaches (harness.scenario), never the fixed shapes.
BATCH_WIDTH = "a reduction skipped for batch rows past the second"
CACHE_GROWTH = "wrong where the KV cache grows (a decode at position 256)"
REQUEST_LEFT = "state corrupted when a request leaves the batch"
REUSED_PREFIX = "a reused prefix cache read wrongly"
CONTROL = "correct sharding that differs from mlx-lm's"

ATTENTION, MLP, OUTPUT = (diagnose.PART_NAMES[p] for p in ("attn", "mlp", "out"))
LOOP = "loop"  # the zoo feature of architectures that run their layers more than once
L1, L2 = parts.MLP_LAYER, parts.ATTENTION_LAYER


@dataclass(frozen=True)
class Structure:
    """What the faults need to know about an architecture's tiny model."""

    layers: int = 0
    stacked_experts: bool = False  # layer 1 has SwitchGLU-like experts
    shared_experts: bool = False
    expert_bias: bool = False  # the stacked down projection has a bias
    attention: bool = False  # layer 2 has an attention module
    kv_heads: bool = False  # ... that keeps a KV-head count
    fused_qkv: bool = False  # ... that is a GatedDeltaNet with in_proj_qkv
    output_bias: bool = False  # ... whose o_proj has a bias
    mask_and_cache: bool = False  # ... that is called (x, mask, cache)
    pipeline_split: bool = False  # model.model.pipeline(group, split=...)
    plain_pipeline: bool = False  # mlx-lm's PipelineMixin.pipeline, not an override
    final_norm: bool = False  # model.model.norm
    rotating_cache: bool = False  # a layer's cache has a max_size (sliding window)
    kv_cache: bool = False  # layer 2 keeps a plain, unbounded KV cache (no window, no state)
    moe_reduces: bool = False  # layer 1's MoE block all-sums its own output (sharding_group)


@functools.cache
def structure(name: str) -> Structure:
    """Probe the architecture's tiny model (constructed only: weights stay lazy)."""
    if not support(name).available:
        return Structure()
    config = config_copy(ARCHS[name])
    model_cls, args_cls = model_classes(config)
    model = model_cls(args_cls.from_dict(copy.deepcopy(config)))
    found: dict = {"layers": len(decoder_layers(model))}
    inner = getattr(model, "model", None)
    pipeline = getattr(type(inner), "pipeline", None)
    takes = inspect.signature(pipeline).parameters if callable(pipeline) else {}
    found["pipeline_split"] = "split" in takes
    found["plain_pipeline"] = pipeline is PipelineMixin.pipeline
    found["final_norm"] = isinstance(getattr(inner, "norm", None), nn.Module)
    caches = make_prompt_cache(model)
    found["rotating_cache"] = any(getattr(c, "max_size", None) is not None for c in caches)
    found["kv_cache"] = (
        len(caches) > L2
        and hasattr(caches[L2], "update_and_fetch")
        and getattr(caches[L2], "max_size", None) is None
    )
    found.update(_probe(lambda: parts.feedforward(parts.layer(model, L1)), _feedforward))
    found.update(_probe(lambda: parts.attention(parts.layer(model, L2)), _attention))
    return Structure(**found)


def _probe(find: Callable[[], nn.Module], describe: Callable[[nn.Module], dict]) -> dict:
    try:
        return describe(find())
    except ValueError:  # no such layer or sub-block
        return {}


def _feedforward(block: nn.Module) -> dict:
    experts = parts.stacked_experts(block)
    return {
        "stacked_experts": experts is not None,
        "shared_experts": parts.shared_experts(block) is not None,
        "expert_bias": experts is not None and "bias" in experts.down_proj,
        "moe_reduces": experts is not None and hasattr(block, "sharding_group"),
    }


def _attention(attn: nn.Module) -> dict:
    o_proj = attn.get("o_proj")
    try:
        forward = inspect.getsource(type(attn).__call__)
    except (OSError, TypeError):
        forward = ""
    # gpt_oss keeps a KV-head count but reshapes with -1: only a count the forward reads
    # can be left undivided to any effect.
    counts = [n for n in parts.KV_HEAD_COUNTS if isinstance(getattr(attn, n, None), int)]
    return {
        "attention": True,
        "kv_heads": any(f"self.{n}" in forward for n in counts),
        "fused_qkv": "in_proj_qkv" in attn and "conv1d" in attn,
        "output_bias": isinstance(o_proj, nn.Module) and "bias" in o_proj,
        "mask_and_cache": shape_faults.takes_mask_and_cache(attn),
    }


Applies = Callable[[Arch, Support], bool]


def tp(need: Callable[[Structure], bool] = lambda s: True) -> Applies:
    """Needs mlx-lm's tensor parallel (the fault starts from it) and `need` of the model."""
    return lambda arch, sup: sup.available and sup.tp and need(structure(arch.name))


def pp(need: Callable[[Structure], bool] = lambda s: True) -> Applies:
    return lambda arch, sup: sup.available and sup.pp and need(structure(arch.name))


def named(*names: str) -> Applies:
    # A control that reproduces some architectures' shard() applies to those it was
    # written for: structure alone cannot tell that another needs nothing more.
    return lambda arch, sup: sup.available and sup.tp and arch.name in names


@dataclass(frozen=True)
class Fault:
    name: str
    strategy: str
    bug_class: str
    applies: Applies
    representative: tuple[str, ...]
    expected: CaseStatus = CaseStatus.FAIL  # FAIL, CRASH or TIMEOUT; PASS for a control
    diagnoses: tuple[str, ...] = ()  # substrings; "{ranks}" is the rank count
    layer: int | None = None  # the injected layer, where the fault has one
    part: str | None = None  # attention | mlp/moe | layer output
    precision: str = "fp32"  # fp32 | q4 | q4-bf16 | ... (a suite's precision label)
    min_ranks: int = 2
    base: str = "tp"  # the built-in parallelism it starts from (its preflight rules)
    shape: str | None = None  # the shape profile it shows at (None: the selftest's short)
    # The smallest scenario (harness.scenario) it shows at, where the fixed shapes pass it:
    # what `harness explore` must find and shrink to.
    scenario: dict | None = field(default=None, hash=False)

    @property
    def control(self) -> bool:
        return self.expected == CaseStatus.PASS

    def precision_fields(self, precision: str | None = None) -> dict:
        """The Case fields (dtype, quant) of its precision, or of `precision` instead."""
        return parse_precision(precision or self.precision)

    def expected_diagnoses(self, ranks: int) -> list[str]:
        return [d.format(ranks=ranks) for d in self.diagnoses]

    def applies_to(self, name: str) -> bool:
        if name not in ARCHS:
            return False
        arch = ARCHS[name]
        # A looped model (iquestloopcoder) calls its layers' projections directly, never
        # a layer or its attention as a whole: wrapping faults do nothing there, and the
        # per-layer capture cannot place a divergence.
        if not self.control and LOOP in arch.features:
            return False
        return bool(self.applies(arch, support(name)))

    def archs(self, all_archs: bool = False) -> list[str]:
        return [n for n in ARCHS if self.applies_to(n)] if all_archs else list(self.representative)


def _at(layer: int, part: str, *more: str) -> dict:
    """A fault injected at `layer`'s `part`: the diagnosis must name exactly that."""
    where = diagnose.first_divergent_layer(layer, part)
    return {"layer": layer, "part": part, "diagnoses": (*more, where)}


F = "harness.faults."
# Tensor parallel differs by ~9e-5 at the 40th token here (KL 3e-10), above the fp32
# atol: suites/moe.toml loosens it for this case; the control leaves it out.
LOOSE_AT_LONG = ("deepseek_v41",)
# Architectures whose mlx-lm shard() controls.manual_tp reproduces.
MANUAL_TP = ("qwen3_moe", "deepseek_v3")

# A table, kept aligned by hand.
# fmt: off
_ENTRIES: tuple[Fault, ...] = (
    # ---- faults: each must fail (or crash) with its diagnosis, at its layer ----
    Fault(name="expert_axis_gate_up", strategy=F + "slicing:expert_axis_gate_up",
          bug_class=WRONG_AXIS, applies=tp(lambda s: s.stacked_experts),
          representative=("qwen3_moe", "deepseek_v3", "gpt_oss"), **_at(L1, MLP)),
    Fault(name="expert_axis_gate_up_q4", strategy=F + "slicing:expert_axis_gate_up",
          bug_class=WRONG_AXIS, applies=tp(lambda s: s.stacked_experts),
          representative=("qwen3_moe",), precision="q4", **_at(L1, MLP)),
    Fault(name="double_reduce_mlp", strategy=F + "reduction:double_reduce_mlp",
          bug_class=UNSHARDED_SUM, applies=tp(lambda s: s.layers > L1),
          representative=("qwen3_moe", "deepseek_v3", "gpt_oss"),
          **_at(L1, MLP, diagnose.scaled("{ranks}"))),
    Fault(name="unsharded_shared_expert", strategy=F + "reduction:unsharded_shared_expert",
          bug_class=UNSHARDED_SUM, applies=tp(lambda s: s.shared_experts),
          representative=("deepseek_v3", "qwen3_5_moe"), **_at(L1, MLP)),
    Fault(name="undivided_expert_bias", strategy=F + "reduction:undivided_expert_bias",
          bug_class=UNSHARDED_SUM, applies=tp(lambda s: s.expert_bias),
          representative=("gpt_oss",), **_at(L1, MLP)),
    Fault(name="bias_before_reduce", strategy=F + "reduction:bias_before_reduce",
          bug_class=UNSHARDED_SUM, applies=tp(lambda s: s.output_bias),
          representative=("gpt_oss",), **_at(L2, ATTENTION)),
    Fault(name="contiguous_fused_qkv", strategy=F + "slicing:contiguous_fused_qkv",
          bug_class=FUSED_SPLIT, applies=tp(lambda s: s.fused_qkv),
          representative=("qwen3_5_moe", "qwen3_5"), **_at(L2, ATTENTION)),
    Fault(name="saturating_head", strategy=F + "corruption:saturating_head",
          bug_class=SATURATING, applies=tp(lambda s: s.final_norm),
          representative=("qwen3_moe",),
          diagnoses=(diagnose.SATURATED, diagnose.AFTER_LAST_LAYER)),
    Fault(name="missing_reduction_attention",
          strategy=F + "reduction:missing_reduction_attention",
          bug_class=MISSING_SUM, applies=tp(lambda s: s.attention),
          representative=("qwen3_moe", "deepseek_v3"), **_at(L2, ATTENTION)),
    Fault(name="missing_reduction_mlp", strategy=F + "reduction:missing_reduction_mlp",
          bug_class=MISSING_SUM, applies=tp(lambda s: s.layers > L1),
          representative=("qwen3_moe", "llama"), **_at(L1, MLP)),
    Fault(name="rank_order_swap", strategy=F + "slicing:rank_order_swap",
          bug_class=RANK_ORDER, applies=tp(lambda s: s.stacked_experts),
          representative=("qwen3_moe", "deepseek_v3"), **_at(L1, MLP)),
    # Pipelines that override pipeline() to index layers themselves (qwen3_5, qwen3_next,
    # ministral3, kimi_k3) crash on a shifted stage instead of skipping silently.
    Fault(name="skip_layer", strategy=F + "pipeline:skip_layer", bug_class=PIPELINE,
          applies=pp(lambda s: s.layers == 4 and s.plain_pipeline),
          representative=("qwen3_moe", "deepseek_v3"),
          base="pp", layer=L2, part=OUTPUT, diagnoses=(diagnose.skipped_layer(L2),)),
    Fault(name="decode_only", strategy=F + "corruption:decode_only", bug_class=DECODE_ONLY,
          applies=tp(lambda s: s.attention), representative=("qwen3_moe",),
          diagnoses=(diagnose.DECODE_ONLY,)),
    Fault(name="perturb_one_expert", strategy=F + "corruption:perturb_one_expert",
          bug_class=SMALL, applies=tp(lambda s: s.stacked_experts),
          representative=("qwen3_moe", "deepseek_v3"), **_at(L1, MLP)),
    Fault(name="perturb_one_expert_q4", strategy=F + "corruption:perturb_one_expert",
          bug_class=SMALL, applies=tp(lambda s: s.stacked_experts),
          representative=("qwen3_moe",), precision="q4", **_at(L1, MLP)),
    Fault(name="nan_in_attention", strategy=F + "corruption:nan_in_attention",
          bug_class=NON_FINITE, applies=tp(lambda s: s.attention),
          representative=("qwen3_moe",), layer=L2, part=ATTENTION,
          diagnoses=(diagnose.non_finite(diagnose.layer_name(L2, ATTENTION)),)),
    Fault(name="kv_heads_not_divided", strategy=F + "heads:kv_heads_not_divided",
          bug_class=HEADS_NOT_DIVIDED, applies=tp(lambda s: s.kv_heads),
          # Every rank raises the same error; which one reports it first is a race (rank 1
          # did on a loaded machine), so the expectation names no rank.
          representative=("qwen3_moe",), expected=CaseStatus.CRASH, diagnoses=(" raised ",)),
    # ---- shape classes: each fails only at its shape, with where it starts ----
    Fault(name="later_prefill_chunk", strategy=F + "shape_bugs:later_prefill_chunk",
          bug_class=PREFILL_CHUNK, applies=tp(lambda s: s.mask_and_cache and s.kv_cache),
          representative=("qwen3_moe",), shape="long-chunked",
          **_at(L2, ATTENTION, diagnose.from_prompt_token(32, 2, 3))),
    # A latent MoE (kimi_k3) calls its experts in a latent width of its own: left out.
    Fault(name="many_tokens", strategy=F + "shape_bugs:many_tokens", bug_class=TOKEN_COUNT,
          applies=lambda arch, sup: "latent_moe" not in arch.features
          and tp(lambda s: s.stacked_experts)(arch, sup), representative=("qwen3_moe",),
          shape="long-chunked", **_at(L1, MLP, diagnose.from_prompt_token(0, 1, 3))),
    Fault(name="batch_one", strategy=F + "shape_bugs:batch_one", bug_class=BATCH_ONE,
          applies=tp(lambda s: s.mask_and_cache), representative=("qwen3_moe",),
          shape="single-stream", **_at(L2, ATTENTION)),
    Fault(name="past_window", strategy=F + "shape_bugs:past_window", bug_class=WINDOW,
          applies=tp(lambda s: s.mask_and_cache and s.rotating_cache),
          representative=("gpt_oss",), shape="window",
          diagnoses=(diagnose.DECODE_ONLY, diagnose.from_decode_position(4, 2, 8))),
    # MLA attention builds its own array masks, so only GQA heads take the plain causal one.
    Fault(name="unmasked_padding", strategy=F + "shape_bugs:unmasked_padding", bug_class=PADDING,
          applies=tp(lambda s: s.mask_and_cache and s.kv_cache and s.kv_heads),
          representative=("qwen3_moe",), shape="mixed",
          **_at(L2, ATTENTION, diagnose.from_prompt_token(4, 4, 4))),
    # ---- production conditions: bf16 activations, past one prefill step, a second request
    Fault(name="bf16_double_reduce", strategy=F + "production:bf16_double_reduce",
          bug_class=BF16_ONLY, applies=tp(lambda s: s.layers > L1),
          representative=("qwen3_moe",), precision="q4-bf16",
          **_at(L1, MLP, diagnose.scaled("{ranks}"))),
    # Each rank keeps its own partial sum: the ranks disagree at the hit positions (2.4-16x
    # the single-rank run's median error apart on 2 ranks), caught on every architecture at
    # q4-bf16 and q8-bf16 by the ranks' agreement (records.envelope), where a block without
    # its own sharding_group (the dense ones, qwen3_5_moe) divides its output by the rank
    # count on every rank: those positions move 3.2-4.8x, past POSITION_RATIO.
    Fault(name="bf16_partial_sum_some_positions",
          strategy=F + "production:bf16_partial_sum_some_positions", bug_class=BF16_FEW,
          applies=tp(lambda s: s.layers == 4), representative=("glm4_moe",),
          precision="q4-bf16", **_at(3, MLP)),
    # Every rank holds the same wrong value: only the positions' own envelope sees it,
    # where no flip of rounding's at or before them explains them.
    Fault(name="bf16_double_reduce_some_positions",
          strategy=F + "production:bf16_double_reduce_some_positions", bug_class=BF16_FEW,
          applies=tp(lambda s: s.layers == 4), representative=("qwen3_moe", "llama"),
          precision="q4-bf16", **_at(3, MLP)),
    Fault(name="past_prefill_step", strategy=F + "production:past_prefill_step",
          bug_class=PAST_PREFILL_STEP, applies=tp(lambda s: s.mask_and_cache and s.kv_cache),
          representative=("qwen3_moe",), shape="past-prefill-step",
          **_at(L2, ATTENTION, diagnose.from_prompt_token(2048, 2, 3))),
    Fault(name="state_between_requests", strategy=F + "production:state_between_requests",
          bug_class=STATE_CARRIED, applies=tp(lambda s: s.mask_and_cache and s.kv_cache),
          representative=("qwen3_moe",),
          diagnoses=(diagnose.state_carried(2, None),)),
    Fault(name="stale_decode_state", strategy=F + "production:stale_decode_state",
          bug_class=STATE_CARRIED, applies=tp(lambda s: s.mask_and_cache and s.kv_cache),
          representative=("qwen3_moe",),
          diagnoses=(f"{diagnose.STATE_CARRIED}, {diagnose.from_decode_step(1, 2)}",)),
    # ---- serving: batch width, the cache's growth step, a request leaving, a reused prefix
    Fault(name="wide_batch", strategy=F + "serving:wide_batch", bug_class=BATCH_WIDTH,
          applies=tp(lambda s: s.moe_reduces), representative=("qwen3_moe", "deepseek_v3"),
          scenario={"kind": "batch", "prompts": [1, 1, 1], "prefill_step": 1, "decode": 0},
          **_at(L1, MLP, diagnose.at_batch_prompt_token(2, 3, 0, 1, 1, 1))),
    Fault(name="cache_growth", strategy=F + "serving:cache_growth", bug_class=CACHE_GROWTH,
          applies=tp(lambda s: s.moe_reduces and s.kv_cache), representative=("qwen3_moe",),
          scenario={"kind": "batch", "prompts": [256], "prefill_step": 256, "decode": 1},
          diagnoses=(diagnose.DECODE_ONLY, diagnose.at_batch_decode_step(0, 1, 1, 1, 256))),
    Fault(name="request_left", strategy=F + "serving:request_left", bug_class=REQUEST_LEFT,
          applies=tp(lambda s: s.mask_and_cache and s.kv_cache), representative=("qwen3_moe",),
          scenario={"kind": "serve", "prefill_step": 4, "ops": [
              {"op": "insert", "uid": 0, "prompt": 1, "max_tokens": 1},
              {"op": "insert", "uid": 1, "prompt": 1, "max_tokens": 3},
              {"op": "step", "n": 4}]},
          diagnoses=(diagnose.at_serve_token(1, 2, 2, 2, "step", after=[0]),)),
    Fault(name="reused_prefix", strategy=F + "serving:reused_prefix", bug_class=REUSED_PREFIX,
          applies=tp(lambda s: s.mask_and_cache and s.kv_cache), representative=("qwen3_moe",),
          scenario={"kind": "serve", "prefill_step": 4, "ops": [
              {"op": "insert", "uid": 0, "prompt": 2, "max_tokens": 1},
              {"op": "step", "n": 3},
              {"op": "insert", "uid": 1, "prompt": 2, "max_tokens": 1,
               "reuse": {"uid": 0, "tokens": 1}},
              {"op": "step", "n": 2}]},
          diagnoses=(diagnose.at_serve_token(1, 0, 1, 3, "step", [0], reused=1, source=0),)),
    # ---- controls: correct, different from mlx-lm's own; each must pass ----
    Fault(name="manual_tp", strategy=F + "controls:manual_tp", bug_class=CONTROL,
          applies=named(*MANUAL_TP), representative=MANUAL_TP, expected=CaseStatus.PASS),
    Fault(name="manual_tp_q4", strategy=F + "controls:manual_tp", bug_class=CONTROL,
          applies=named(*MANUAL_TP), representative=("qwen3_moe",), expected=CaseStatus.PASS,
          precision="q4"),
    Fault(name="uneven_pipeline", strategy=F + "controls:uneven_pipeline", bug_class=CONTROL,
          applies=pp(lambda s: s.pipeline_split), representative=("qwen3_moe", "deepseek_v3"),
          expected=CaseStatus.PASS, base="pp"),
    # exo's pipeline layers: the captured stage-end states are the final state, the logits
    # the single-rank run's. Outputs decide: it passes at every precision.
    Fault(name="gathered_stage_end", strategy=F + "controls:gathered_stage_end",
          bug_class=CONTROL, applies=pp(lambda s: s.plain_pipeline),
          representative=("qwen3_moe", "deepseek_v3"),
          expected=CaseStatus.PASS, base="pp"),
    Fault(name="gathered_stage_end_q4_bf16", strategy=F + "controls:gathered_stage_end",
          bug_class=CONTROL, applies=pp(lambda s: s.plain_pipeline),
          representative=("qwen3_moe", "deepseek_v3"),
          expected=CaseStatus.PASS, base="pp", precision="q4-bf16"),
    Fault(name="tp_q4", strategy="tp", bug_class=CONTROL, applies=tp(),
          representative=("qwen3_moe", "deepseek_v3", "gpt_oss"), expected=CaseStatus.PASS,
          precision="q4"),
    Fault(name="tp_q4_bf16", strategy="tp", bug_class=CONTROL, applies=tp(),
          representative=("qwen3_moe", "deepseek_v3", "gpt_oss"), expected=CaseStatus.PASS,
          precision="q4-bf16"),
    Fault(name="tp_long_chunked", strategy="tp", bug_class=CONTROL,
          applies=lambda arch, sup: arch.name not in LOOSE_AT_LONG and tp()(arch, sup),
          representative=("qwen3_moe", "gpt_oss"), expected=CaseStatus.PASS, shape="long-chunked"),
    Fault(name="tp_mixed", strategy="tp", bug_class=CONTROL, applies=tp(),
          representative=("qwen3_moe",), expected=CaseStatus.PASS, shape="mixed"),
    Fault(name="tp_serve", strategy="tp", bug_class=CONTROL, applies=tp(),
          representative=("qwen3_moe", "deepseek_v3"), expected=CaseStatus.PASS,
          scenario={"kind": "serve", "prefill_step": 4, "ops": [
              {"op": "insert", "uid": 0, "prompt": 6, "max_tokens": 4},
              {"op": "step", "n": 3},
              {"op": "insert", "uid": 1, "prompt": 9, "max_tokens": 3},
              {"op": "insert", "uid": 2, "prompt": 2, "max_tokens": 5},
              {"op": "step", "n": 2},
              {"op": "remove", "uid": 0},
              {"op": "insert", "uid": 3, "prompt": 8, "max_tokens": 3,
               "reuse": {"uid": 0, "tokens": 5}},
              {"op": "step", "n": 8}]}),
)
# fmt: on

CATALOG: dict[str, Fault] = {fault.name: fault for fault in _ENTRIES}


def get_fault(name: str) -> Fault:
    try:
        return CATALOG[name]
    except KeyError:
        raise HarnessError(f"unknown fault '{name}'; known: {', '.join(CATALOG)}") from None
