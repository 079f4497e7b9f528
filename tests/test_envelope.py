"""The precision-aware verdict on constructed outputs: a sharded run as far from the fp32
truth as the single-rank run passes, whatever its router flips; one further fails, says by
how much, where in the prompt and at which layer."""

import numpy as np

from harness.records import envelope
from harness.records.ladder import TOLERANCES, compare
from harness.records.outputs import Output

rng = np.random.default_rng(0)
B, L, V, S, D = 1, 40, 64, 4, 16
CALLS = np.array([[0] * 32 + [1] * 7 + [2]])  # as long-chunked: 32, 7, then 1


def truth() -> Output:
    prefill = rng.normal(size=(B, L, V)).astype(np.float32)
    decode = rng.normal(size=(S, B, V)).astype(np.float32)
    tokens = np.concatenate([prefill[:, -1:].argmax(-1), decode.argmax(-1).T], axis=1)
    states = {
        f"layer.{i}.{part}": rng.normal(size=(B, L, D)).astype(np.float32)
        for i in range(3)
        for part in ("attn", "mlp", "out")
    }
    return Output(prefill, decode, tokens, states, CALLS, forced=True)


def rounded(t: Output, scale: float = 0.04, flips: tuple[int, ...] = (), layer: int = 1) -> Output:
    """`t` with bf16-like relative noise, and a flip of `layer`'s router (an error of ~60%
    from its MoE block on) at `flips`."""

    def noisy(x: np.ndarray, flipped: bool = True) -> np.ndarray:
        out = x * (1 + scale * rng.normal(size=x.shape)).astype(np.float32)
        for p in flips if flipped else ():
            if x.ndim == 3 and x.shape[1] == L:
                out[:, p] += 0.6 * rng.normal(size=out[:, p].shape) * np.abs(x[:, p]).mean()
        return out

    layers = {k: noisy(v, _after_the_router(k, layer)) for k, v in t.layers.items()}
    return Output(noisy(t.prefill), noisy(t.decode), t.tokens.copy(), layers, CALLS, forced=True)


def _after_the_router(key: str, layer: int = 1) -> bool:
    """A flip of layer `layer`'s router changes its MoE block's output there and every
    state after it, not what fed the router, its scores or anything before."""
    index, part = int(key.split(".")[1]), key.split(".")[2]
    return index > layer or (index == layer and part in ("mlp", "out"))


E, K = 8, 2
ROUTER, ROUTER_IN = "layer.1.router.k2", "layer.1.router_in"


def routed(t: Output, ties: tuple[int, ...] = ()) -> Output:
    """`t` with layer 1's router input and scores: clear margins, near-ties at `ties`."""
    scores = np.tile(np.linspace(1.0, 0.0, E, dtype=np.float32), (B, L, 1))
    for p in ties:
        scores[:, p, K] = scores[:, p, K - 1] - 0.01
    t.layers[ROUTER] = scores
    t.layers[ROUTER_IN] = rng.normal(size=(B, L, D)).astype(np.float32)
    return t


def choosing(x: Output, t: Output, swapped: tuple[int, ...]) -> Output:
    """`x` routing as the truth does (its scores rounded), but with its k-th and (k+1)-th
    experts swapped at `swapped` (a tie rounded the other way, or a router gone wrong)."""
    scores = t.layers[ROUTER] * (1 + 0.01 * rng.normal(size=t.layers[ROUTER].shape))
    for p in swapped:
        top = np.argsort(-t.layers[ROUTER][:, p], axis=-1)[:, : K + 1]
        for b in range(B):
            kth, next_ = top[b, K - 1], top[b, K]
            scores[b, p, [kth, next_]] = t.layers[ROUTER][b, p, [next_, kth]]
    x.layers[ROUTER] = scores.astype(np.float32)
    return x


def test_rounding_and_router_flips_stay_inside_the_envelope():
    t = routed(truth(), ties=(3, 11, 20, 35))
    ref = choosing(rounded(t, flips=(3,)), t, (3,))
    test = choosing(rounded(t, 0.05, flips=(11, 20, 35)), t, (11, 20, 35))
    cmp = compare(ref, test, TOLERANCES["bf16"], world=2, truth=t)
    assert cmp.passed, cmp.envelope
    assert cmp.envelope["ratio_limit"] == envelope.RATIO
    assert all(s["ratio"] < 2 for s in cmp.envelope["logits"])
    assert cmp.envelope["explained"] > 0 and not cmp.envelope["outliers"]


def few_positions(t: Output, test: Output, every: int = 16, at: int = 7) -> None:
    """A bug at 1 of every `every` positions in the last layer's MoE block."""
    hit = np.arange(L) % every == at
    test.layers["layer.2.mlp"][:, hit] = t.layers["layer.2.mlp"][:, hit] * 1.5
    test.layers["layer.2.out"][:, hit] = t.layers["layer.2.out"][:, hit] * 1.5
    test.prefill[:, hit] = t.prefill[:, hit] * 1.5


def test_a_bug_at_a_few_positions_fails_at_its_first_position_and_layer():
    t = routed(truth())
    ref, test = rounded(t), choosing(rounded(t), t, ())
    ref.layers[ROUTER] = t.layers[ROUTER]
    few_positions(t, test)
    cmp = compare(ref, test, TOLERANCES["bf16"], world=2, truth=t)
    assert not cmp.passed
    assert all(s["ratio"] <= envelope.RATIO for s in cmp.envelope["logits"])  # medians pass
    assert [o["position"] for o in cmp.envelope["outliers"]] == [7, 23, 39]
    said = cmp.diagnoses[0]
    assert said.startswith("prefill tokens 0-31: 3 position(s) up to"), said
    assert "no flip of rounding's explains them" in said
    assert "from prompt token 7 (prefill chunk 1 of 3)" in cmp.diagnoses
    assert cmp.diagnoses[-1] == "first divergent layer 2 (mlp/moe)"


def test_a_router_flip_explains_its_position_only_where_fed_within_rounding():
    t = routed(truth(), ties=(7,))
    ref = rounded(t)
    test = choosing(rounded(t, flips=(7,)), t, (7,))
    assert compare(ref, test, TOLERANCES["bf16"], world=2, truth=t).passed
    # The same flip where something before the router went wrong at position 7: its input
    # is half again the truth's, not rounding's doing.
    test = choosing(rounded(t, flips=(7,)), t, (7,))
    test.layers[ROUTER_IN][:, 7] *= 1.5
    cmp = compare(ref, test, TOLERANCES["bf16"], world=2, truth=t)
    assert not cmp.passed and cmp.envelope["outliers"][0]["position"] == 7


def test_a_flip_in_the_last_layer_explains_its_own_position_only():
    # No attention follows the last layer: its flip at 5 reaches no later position, so a
    # bug at 7 there is not excused by it.
    t = routed(truth(), ties=(5,))
    for key in (ROUTER, ROUTER_IN):
        t.layers[key.replace("layer.1.", "layer.2.")] = t.layers.pop(key)
    last = ROUTER.replace("layer.1.", "layer.2.")
    ref = rounded(t)
    test = rounded(t, flips=(5,), layer=2)
    test.layers[last] = t.layers[last].copy()
    test.layers[last][:, 5, [K - 1, K]] = t.layers[last][:, 5, [K, K - 1]]
    assert compare(ref, test, TOLERANCES["bf16"], world=2, truth=t).passed
    test.prefill[:, 7] = t.prefill[:, 7] * 1.5
    cmp = compare(ref, test, TOLERANCES["bf16"], world=2, truth=t)
    assert [o["position"] for o in cmp.envelope["outliers"]] == [7], cmp.envelope


def test_where_the_single_rank_run_is_as_far_the_sharded_one_may_be():
    # A pipeline is bit-identical to the single-rank run, its router flips included.
    t = routed(truth())
    ref = rounded(t, flips=(5, 30))
    test = Output(ref.prefill, ref.decode, ref.tokens, dict(ref.layers), CALLS, forced=True)
    assert compare(ref, test, TOLERANCES["bf16"], world=2, truth=t).passed


def test_outputs_decide_a_layer_only_difference_is_a_warning():
    # A stage-end layer that returns the gathered final state: logits identical, the
    # captured state 35x off.
    t = truth()
    ref = rounded(t)
    test = Output(ref.prefill, ref.decode, ref.tokens, dict(ref.layers), CALLS, forced=True)
    test.layers["layer.1.out"] = ref.layers["layer.1.out"] * 35
    cmp = compare(ref, test, TOLERANCES["bf16"], world=2, truth=t)
    assert cmp.passed and not cmp.diagnoses
    warned = [w for w in cmp.warnings if w.startswith("outputs pass, a layer does not")]
    assert warned and "layer 1 (layer output)" in warned[0], cmp.warnings


def test_an_unsharded_all_sum_is_many_times_the_envelope_and_localized():
    t = truth()
    ref, test = rounded(t), rounded(t)
    test.layers["layer.1.mlp"] = ref.layers["layer.1.mlp"] * 2
    for key in ("layer.1.out", "layer.2.attn", "layer.2.mlp", "layer.2.out"):
        test.layers[key] = test.layers[key] * 1.5
    test.prefill[:] = test.prefill * 1.5
    cmp = compare(ref, test, TOLERANCES["bf16"], world=2, truth=t)
    assert not cmp.passed
    assert "scaled x2" in cmp.diagnoses
    assert cmp.diagnoses[-1] == "first divergent layer 1 (mlp/moe)"
    assert any("the single-rank run's error against the fp32 truth" in d for d in cmp.diagnoses)


def test_a_later_prefill_chunk_says_where_it_starts():
    t = truth()
    ref, test = rounded(t), rounded(t)
    test.prefill[:, 32:] = t.prefill[:, 32:] * 1.6
    test.layers["layer.2.attn"][:, 32:] = t.layers["layer.2.attn"][:, 32:] * 1.6
    cmp = compare(ref, test, TOLERANCES["bf16"], world=2, truth=t)
    assert not cmp.passed
    assert "from prompt token 32 (prefill chunk 2 of 3)" in cmp.diagnoses
    assert cmp.first_divergent_layer == 2 and cmp.first_divergent_part == "attention"


def test_decode_only_and_non_finite():
    t = truth()
    ref, test = rounded(t), rounded(t)
    test.decode[:] = t.decode * 1.8
    cmp = compare(ref, test, TOLERANCES["bf16"], world=2, truth=t)
    assert not cmp.passed and cmp.diagnoses[0] == "decode-only"
    test = rounded(t)
    test.prefill[0, 5, 0] = np.nan
    assert not compare(ref, test, TOLERANCES["bf16"], world=2, truth=t).passed


def test_segments_merge_a_short_last_call():
    segments = envelope.prefill_segments(truth())
    assert [(start, int(mask.sum())) for start, mask in segments] == [(0, 32), (32, 8)]


def test_token_agreement_is_reported_not_judged():
    t = truth()
    ref, test = rounded(t), rounded(t)
    test.tokens[0, 2] = (ref.tokens[0, 2] + 1) % V
    cmp = compare(ref, test, TOLERANCES["bf16"], world=2, truth=t)
    assert cmp.passed
    assert any(w.startswith("greedy tokens differ from step 2 of 5") for w in cmp.warnings)


def test_a_layer_no_rank_ran_and_a_divergence_after_the_last_layer_are_named():
    t = truth()
    ref, test = rounded(t), rounded(t)
    for part in ("attn", "mlp", "out"):
        del test.layers[f"layer.1.{part}"]
    test.prefill[:] = t.prefill * 1.6
    cmp = compare(ref, test, TOLERANCES["bf16"], world=2, truth=t)
    assert "layer 1 did not run on any rank" in cmp.diagnoses
    test = rounded(t)
    test.prefill[:] = t.prefill * 1.6
    cmp = compare(ref, test, TOLERANCES["bf16"], world=2, truth=t)
    assert cmp.diagnoses[-1].startswith("layers match: divergence after the last decoder layer")


def test_group_limited_routing_flips_are_explained_by_what_fed_the_router():
    # DeepSeek V3 picks groups first (by their top-2 sums), then experts within them: the
    # gate reports its choice, which is not the top-k of the raw scores, and a flip between
    # two near-tied groups swaps experts far apart in score. Fed within rounding, it is
    # rounding's; fed half again what the truth's router was, it is not.
    experts = ROUTER.replace(".router.", ".experts.")
    for fed, explained in ((1.0, True), (1.5, False)):
        t = routed(truth())
        t.layers[ROUTER] = np.tile(
            np.array([0.1, 0.1, 0.2, 0.2, 0.9, 0.88, 0.3, 0.29], np.float32), (B, L, 1)
        )
        t.layers[experts] = np.tile(np.array([4, 5], np.float32), (B, L, 1))
        t.layers[experts][:, 7] = [2, 3]
        ref = rounded(t)
        ref.layers[experts] = t.layers[experts].copy()
        test = rounded(t, flips=(7,))
        test.layers[experts] = t.layers[experts].copy()
        test.layers[experts][:, 7] = [4, 5]
        test.layers[ROUTER_IN][:, 7] *= fed
        cmp = compare(ref, test, TOLERANCES["bf16"], world=2, truth=t)
        assert cmp.passed is explained, (fed, cmp.diagnoses)


def _judged(outputs: dict[int, Output], ref: Output, t: Output):
    from harness.case import Case
    from harness.records import verdict
    from harness.records.result import CaseResult
    from harness.status import CaseStatus

    case = Case(arch="qwen3_moe", strategy="tp", dtype="bfloat16", quant=4)
    result = CaseResult(index=1, case=case, ranks=len(outputs), status=CaseStatus.PASS)
    verdict.judge(result, ref, outputs, truth=t)
    return result


def test_ranks_holding_different_logits_fail_where_they_part_at_the_layer_they_part():
    # Each rank keeps its own partial MoE sum at position 7 of the last layer: each rank
    # alone is within a position's envelope, the two are apart by far more than rounding.
    t = truth()
    ref = rounded(t)
    shared = rounded(t)
    ranks = {
        r: Output(
            shared.prefill.copy(),
            shared.decode.copy(),
            shared.tokens.copy(),
            {k: v.copy() for k, v in shared.layers.items()},
            CALLS,
            forced=True,
        )
        for r in (0, 1)
    }
    for r, sign in ((0, 1.0), (1, -1.0)):
        for key in ("layer.2.mlp", "layer.2.out"):
            ranks[r].layers[key][:, 7] += sign * 0.3 * np.abs(t.layers[key][:, 7])
        ranks[r].prefill[:, 7] += sign * 0.06 * np.abs(t.prefill[:, 7])
    alone = compare(ref, ranks[0], TOLERANCES["bf16"], world=2, truth=t)
    assert alone.passed, alone.diagnoses
    result = _judged(ranks, ref, t)
    assert result.status == "fail"
    said = result.diagnoses
    assert said[0].startswith("ranks 0 and 1 hold different logits at 1 position(s), up to")
    assert "from prompt token 7 (prefill chunk 1 of 3)" in said
    assert said[-1] == "first divergent layer 2 (mlp/moe)", said
    assert all(c.first_divergent_layer == 2 for c in result.comparisons.values())


def test_ranks_with_the_same_logits_or_a_last_collective_rounding_apart_agree():
    t = truth()
    ref, shared = rounded(t), rounded(t)
    assert _judged({0: shared, 1: shared}, ref, t).status == "pass"
    # A last collective that rounds differently on each rank: bf16's last bit apart.
    last_bit = 1 + 2.0**-8 * rng.choice([-1, 1], size=shared.prefill.shape)
    other = Output(
        (shared.prefill * last_bit).astype(np.float32),
        shared.decode,
        shared.tokens,
        shared.layers,
        CALLS,
        forced=True,
    )
    assert _judged({0: shared, 1: other}, ref, t).status == "pass"


def test_ranks_apart_only_in_decode_say_the_decode_position():
    t = truth()
    ref, shared = rounded(t), rounded(t)
    apart = Output(
        shared.prefill, shared.decode.copy(), shared.tokens, shared.layers, CALLS, forced=True
    )
    apart.decode[2] = t.decode[2] * 1.3
    result = _judged({0: shared, 1: apart}, ref, t)
    assert result.status == "fail"
    assert result.diagnoses[0].startswith("ranks 0 and 1 hold different logits")
    assert "from decode position 42 (step 3 of 4)" in result.diagnoses, result.diagnoses


def test_a_serve_program_is_judged_by_its_ranks_agreement_its_medians_shown_undiluted():
    # BatchGenerator captures nothing: a flip of rounding's in a request's prompt moves
    # every token it emits and nothing tells it from a bug, so the medians are shown (over
    # the steps a token came out of, not the empty rows) and only the ranks' agreement
    # decides.
    t = truth()
    order = np.full((B, S + 1), -1)
    order[:, :2] = [0, 1]  # the row's first token, then one decode step of S
    schedule = {"order": order, "op": order.copy(), "reused": np.zeros(B, dtype=np.int64)}

    def serving(x: Output) -> Output:
        decode = x.decode.copy()
        decode[1:] = 0.0  # nothing emitted at steps 2..S
        return Output(x.prefill, decode, x.tokens, {}, CALLS, forced=True, schedule=schedule)

    truth_, ref = serving(t), serving(rounded(t))
    test = serving(rounded(t))
    test.decode[0] = t.decode[0] * 1.8
    cmp = compare(ref, test, TOLERANCES["bf16"], world=2, truth=truth_)
    assert cmp.passed and cmp.envelope["blind"]
    (decode,) = [s for s in cmp.envelope["logits"] if s["name"].startswith("decode")]
    assert decode["ratio"] > 5, decode  # 1.8x off where emitted, not 0 over the empty rows
    assert any("judged by the ranks' agreement only" in w for w in cmp.warnings)
    other = serving(rounded(t))
    other.decode[0] = test.decode[0] * 1.3
    result = _judged({0: test, 1: other}, ref, truth_)
    assert result.status == "fail" and result.diagnoses[0].startswith("ranks 0 and 1 hold")
