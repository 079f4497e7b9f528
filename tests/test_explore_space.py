"""The search space: every drawn scenario is valid, and the boundaries that matter are
reached (the KV cache's growth step in prefill and in decode, wide batches, chunked
prefill, serving programs that remove and reuse)."""

import pytest
from hypothesis import Phase, given, settings
from hypothesis import find as hypothesis_find
from hypothesis import strategies as st

from harness import scenario as scenarios
from harness.explore import space
from harness.explore.space import Boundaries, Example

BOUNDS = Boundaries(window=4, sort_tokens=32, context=4096)
# Reached within this many draws, unshrunk (shrinking a wide batch costs seconds).
REACH = settings(phases=[Phase.generate], max_examples=1000, database=None, derandomize=True)


def find(strategy, condition):
    return hypothesis_find(strategy, condition, settings=REACH)


@given(space.examples(BOUNDS, ("fp32", "q4-bf16")))
def test_every_drawn_example_is_a_valid_scenario(example):
    assert scenarios.check(example.scenario) == example.scenario
    assert example.precision in ("fp32", "q4-bf16")
    assert space.operations(example.scenario) >= 1


@given(space.programs(BOUNDS))
def test_every_program_ends_with_steps_and_removes_only_live_requests(program):
    ops = program["ops"]
    assert ops[0]["op"] == scenarios.INSERT and ops[-1]["op"] == scenarios.STEP
    removed = [op["uid"] for op in ops if op["op"] == scenarios.REMOVE]
    inserted = [op["uid"] for op in ops if op["op"] == scenarios.INSERT]
    assert len(removed) == len(set(removed)) and set(inserted) - set(removed)
    last = [op for op in ops if op["op"] == scenarios.INSERT and op["uid"] not in removed][-1]
    assert ops[-1]["n"] > space.prompt_calls(last["prompt"], program["prefill_step"])


def _decodes_across(scenario, position):
    """A batch row whose decode steps write cache position `position`."""
    return scenario["kind"] == "batch" and any(
        n <= position < n + scenario["decode"] for n in scenario["prompts"]
    )


@pytest.mark.parametrize("position", [255, 256, 257, 511, 512, 513])
def test_decode_reaches_the_cache_growth_boundaries(position):
    found = find(space.batches(BOUNDS), lambda s: _decodes_across(s, position))
    assert _decodes_across(found, position)


@pytest.mark.parametrize("length", [255, 256, 257, 511, 512, 513, 31, 32, 33, 3, 4, 5])
def test_prompts_reach_every_boundary_in_prefill(length):
    assert length in find(space.batches(BOUNDS), lambda s: length in s["prompts"])["prompts"]


def test_wide_batches_of_mixed_lengths_and_chunked_prefill_are_drawn():
    wide = find(
        space.batches(BOUNDS),
        lambda s: (
            len(s["prompts"]) >= 16
            and len(set(s["prompts"])) > 2
            and s["prefill_step"] < max(s["prompts"])
        ),
    )
    assert len(wide["prompts"]) >= 16
    # ... and a batch of several rows still crosses the growth step.
    assert find(
        space.batches(BOUNDS), lambda s: len(s["prompts"]) >= 3 and max(s["prompts"]) >= 257
    )


@given(space.batches(BOUNDS))
def test_a_batch_stays_cheap(batch):
    assert len(batch["prompts"]) * max(batch["prompts"]) <= space.PADDED_TOKENS


def test_programs_insert_into_a_running_batch_remove_and_reuse():
    def rich(program):
        kinds = [op["op"] for op in program["ops"]]
        return (
            scenarios.REMOVE in kinds
            and kinds.count(scenarios.INSERT) >= 2
            and kinds.index(scenarios.STEP) < len(kinds) - 1 - kinds[::-1].index(scenarios.INSERT)
            and any("reuse" in op for op in program["ops"])
        )

    assert rich(find(space.programs(BOUNDS), rich))


def test_boundaries_come_from_the_config():
    bounds = Boundaries.from_config(
        {
            "text_config": {"num_experts_per_tok": 4, "sliding_window": 8},
            "max_position_embeddings": 1024,
        }
    )
    assert bounds == Boundaries(window=8, sort_tokens=16, context=1024)
    assert bounds.points() == (8, 16, 256, 512)
    assert Boundaries.from_config({}).window is None


def test_lengths_stay_within_the_context():
    bounds = Boundaries(context=300)

    @given(space.examples(bounds, ("fp32",)))
    def check(example):
        assert scenarios.extent(example.scenario) <= 300

    check()


@given(
    st.sampled_from(
        [Example("fp32", {"kind": "batch", "prompts": [3, 9], "prefill_step": 4, "decode": 2})]
    )
)
def test_operations_counts_prefill_chunks_and_decode_steps(example):
    assert space.operations(example.scenario) == 3 + 2
