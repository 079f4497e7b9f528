"""Suites: TOML files that expand into cases, found by name in the working directory's
`suites/`, then among the suites the harness ships (`harness.paths`), or given by path.

description = "..."
[defaults]                 # any Case field: seed, decode_steps, group_size, ...
decode_steps = 4
[[matrix]]                 # archs x strategies x precisions x shapes, where the arch
archs = "moe"              # supports it; "moe", "dense", "all" or a list of names
strategies = ["tp", "pp"]
precisions = ["fp32", "q4"]
shapes = ["long-chunked"]  # shape profiles (harness.shapes); without: the defaults' shape
first_supported = true     # each arch once, under the first strategy listed it supports
tolerance = { atol = 1e-4 }  # any other Case field applies to the matrix's cases
[[case]]                   # one explicit case; any Case field
arch = "qwen3_moe"
strategy = "tp"
precision = "q8"
shape = "mixed"            # a shape profile, or prompts / prefill_step / decode_steps
tolerance = { atol = 1e-4 }
[[case]]                   # the model written to disk in a real checkpoint layout and
arch = "deepseek_v3"       # loaded through mlx-lm (harness checkpoint layouts)
layout = "hf-per-expert"
[[case]]                   # a real checkpoint: a path or a repo id in the local Hugging
arch = "qwen3_moe"         # Face cache (never downloaded; skipped when absent)
checkpoint = "mlx-community/Qwen3-30B-A3B-4bit"
prompt_text = ["Why is the sky blue?"]  # text, tokenized with the checkpoint's tokenizer
                           # and chat template (checkpoint or layout cases only)
[[bench]]                  # `harness bench --suite`: tok/s through mlx-lm's generation
arch = "qwen3_moe"         # model fields as in [[case]] (arch, layout, checkpoint, precision)
layout = "mlx"
strategies = ["tp", "pp"]  # compared side by side (default: none at 1 rank, tp above)
prompt_tokens = [128, 512] # shapes: an integer or a list (every combination is a case);
generation_tokens = 64     # mlx_lm.benchmark's defaults where absent
batch_size = 1
"""

from __future__ import annotations

import itertools
import tomllib
from dataclasses import replace
from pathlib import Path

from harness.case import DTYPES, QUANT_BITS, BenchCase, Case
from harness.errors import HarnessError
from harness.paths import suite_dirs
from harness.shapes import get_shape
from harness.zoo import ARCHS, get_arch, support

_CASE_FIELDS = set(Case.__dataclass_fields__) - {"arch", "strategy"}
_MATRIX_KEYS = {"archs", "strategies", "precisions", "shapes", "first_supported"}
_SHORT_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def known_suites() -> list[str]:
    return sorted({p.stem for folder in suite_dirs() for p in folder.glob("*.toml")})


def suite_path(name: str) -> Path:
    """A suite by name (`moe`: the first `moe.toml` of `suite_dirs()`) or by path to a
    TOML file."""
    as_path = Path(name)
    if as_path.suffix == ".toml":
        if not as_path.is_file():
            raise HarnessError(f"suite file '{name}' does not exist")
        return as_path
    for folder in suite_dirs():
        path = folder / f"{name}.toml"
        if path.is_file():
            return path
    raise HarnessError(f"unknown suite '{name}'; known: {', '.join(known_suites())}")


def parse_precision(label: str) -> dict:
    """`fp32`, `bf16`, `fp16`, `q4`, `q8`, `q4-bf16` -> Case fields dtype and quant."""
    quant_part, _, dtype_part = label.partition("-")
    if quant_part in _SHORT_DTYPES and not dtype_part:
        return {"dtype": _SHORT_DTYPES[quant_part], "quant": None}
    if quant_part.startswith("q") and quant_part[1:].isdigit():
        bits = int(quant_part[1:])
        dtype = _SHORT_DTYPES.get(dtype_part or "fp32")
        if bits in QUANT_BITS and dtype is not None:
            return {"dtype": dtype, "quant": bits}
    raise HarnessError(
        f"unknown precision '{label}'; use fp32, bf16, fp16, q4, q8 or q4-bf16 / q8-bf16"
    )


def _arch_names(selector, where: str) -> list[str]:
    if selector in ("moe", "dense", "all"):
        return [n for n, a in ARCHS.items() if selector == "all" or a.moe == (selector == "moe")]
    names = [selector] if isinstance(selector, str) else list(selector)
    for name in names:
        get_arch(name)
    return names


def _case(fields: dict, where: str) -> Case:
    fields = dict(fields)
    if "shape" in fields:
        fields.update(get_shape(fields.pop("shape")).fields())
    if "precision" in fields:
        fields.update(parse_precision(fields.pop("precision")))
    unknown = set(fields) - _CASE_FIELDS - {"arch", "strategy"}
    if unknown:
        raise HarnessError(f"{where}: unknown case field(s) {', '.join(sorted(unknown))}")
    if fields.get("dtype", "float32") not in DTYPES:
        raise HarnessError(
            f"{where}: unknown dtype '{fields['dtype']}'; known: {', '.join(DTYPES)}"
        )
    if "prompts" in fields:
        fields["prompts"] = tuple(tuple(p) for p in fields["prompts"])
    if "prompt_text" in fields:
        fields["prompt_text"] = _prompt_text(fields, where)
    try:
        return Case(**fields)
    except TypeError as exc:
        raise HarnessError(f"{where}: {exc}") from None
    except HarnessError as exc:  # a scenario's mistake, said in one sentence
        raise HarnessError(f"{where}: {exc}") from None


def _prompt_text(fields: dict, where: str) -> tuple[str, ...]:
    texts = fields["prompt_text"]
    if not isinstance(texts, list | tuple) or not all(isinstance(t, str) for t in texts):
        raise HarnessError(f"{where}: prompt_text must be a list of strings")
    if texts and "prompts" in fields:
        raise HarnessError(f"{where}: give prompts (token ids) or prompt_text, not both")
    if texts and not (fields.get("checkpoint") or fields.get("layout")):
        raise HarnessError(
            f"{where}: prompt_text needs a checkpoint or layout, whose tokenizer turns it "
            "into token ids; a zoo model has no tokenizer, so give token ids in prompts"
        )
    return tuple(texts)


def matrix_cases(
    archs: list[str],
    strategies: list[str],
    precisions: list[str],
    defaults: dict,
    shapes: list[str] | None = None,
    keep_unsupported: bool = False,
    first_supported: bool = False,
) -> list[Case]:
    """Every arch x strategy x precision x shape; built-in strategies only where the
    installed mlx-lm supports them (an arch it lacks entirely stays, to be reported as
    skipped; with `keep_unsupported`, every strategy stays, to be skipped with the reason;
    with `first_supported`, only the first strategy each arch supports). A shape's
    prompts, prefill step and decode steps replace the defaults'."""
    profiles = [get_shape(name).fields() for name in shapes] if shapes else [{}]
    cases = []
    for arch in archs:
        sup = support(arch)
        supported = [s for s in strategies if not (s in ("tp", "pp") and not getattr(sup, s))]
        if first_supported:
            supported = supported[:1]
        for strategy in strategies:
            if sup.available and strategy not in supported and not keep_unsupported:
                continue
            for precision in precisions:
                for profile in profiles:
                    fields = {
                        **defaults,
                        **profile,
                        "arch": arch,
                        "strategy": strategy,
                        "precision": precision,
                    }
                    cases.append(_case(fields, f"matrix {arch}/{strategy}/{precision}"))
    return cases


def load_suite(name: str) -> list[Case]:
    path = suite_path(name)
    data = _read(path)
    defaults = data.get("defaults", {})
    cases: list[Case] = []
    for i, matrix in enumerate(data.get("matrix", [])):
        where = f"{path}: matrix {i + 1}"
        fields = {k: v for k, v in matrix.items() if k not in _MATRIX_KEYS}
        missing = {"archs", "strategies"} - set(matrix)
        if missing:
            raise HarnessError(f"{where}: missing {', '.join(sorted(missing))}")
        archs = _arch_names(matrix["archs"], where)
        shapes = matrix.get("shapes")
        if shapes is not None and (
            not isinstance(shapes, list) or not all(isinstance(n, str) for n in shapes)
        ):
            raise HarnessError(f"{where}: shapes must be a list of shape names")
        cases += matrix_cases(
            archs,
            matrix["strategies"],
            matrix.get("precisions", ["fp32"]),
            {**defaults, **fields},
            shapes,
            first_supported=bool(matrix.get("first_supported", False)),
        )
    for i, fields in enumerate(data.get("case", [])):
        where = f"{path}: case {i + 1}"
        if "arch" not in fields:
            raise HarnessError(f"{where}: missing arch")
        get_arch(fields["arch"])
        cases.append(_case({**defaults, "strategy": "tp", **fields}, where))
    if not cases:
        raise HarnessError(f"{path}: the suite defines no cases")
    return dedupe(cases)


def _read(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise HarnessError(f"{path}: malformed TOML: {exc}") from None


_SHAPES = ("prompt_tokens", "generation_tokens", "batch_size", "prefill_step_size")
_BENCH_COUNTS = ("num_trials", "warmup")


def default_strategies(ranks: int) -> list[str]:
    """mlx_lm.benchmark's: the unsharded model on one rank, tensor parallel above."""
    return ["none"] if ranks == 1 else ["tp"]


def bench_cases(
    model: dict, strategies: list[str], shapes: dict, counts: dict, where: str
) -> list[BenchCase]:
    """Every combination of shapes (each an integer or a list of them) x strategy, the
    strategies of one shape next to each other, as the side-by-side table shows them."""
    axes = {k: v if isinstance(v, list) else [v] for k, v in shapes.items()}
    if not strategies or not all(isinstance(s, str) for s in strategies):
        raise HarnessError(f"{where}: strategies must be a non-empty list of names")
    cases = [_case({**model, "strategy": strategy}, where) for strategy in strategies]
    benches = []
    for values in itertools.product(*axes.values()):
        for case in cases:
            try:
                benches.append(BenchCase(case, **dict(zip(axes, values, strict=True)), **counts))
            except HarnessError as exc:
                raise HarnessError(f"{where}: {exc}") from None
    return benches


def load_bench(name: str, ranks: int) -> list[BenchCase]:
    """A suite's [[bench]] entries as bench cases, in order, strategies side by side."""
    path = suite_path(name)
    benches: list[BenchCase] = []
    for i, entry in enumerate(_read(path).get("bench", [])):
        where = f"{path}: bench {i + 1}"
        entry = dict(entry)
        if "arch" not in entry:
            raise HarnessError(f"{where}: missing arch")
        get_arch(entry["arch"])
        strategies = entry.pop("strategies", default_strategies(ranks))
        shapes = {k: entry.pop(k) for k in _SHAPES if k in entry}
        counts = {k: entry.pop(k) for k in _BENCH_COUNTS if k in entry}
        benches += bench_cases(entry, strategies, shapes, counts, where)
    if not benches:
        raise HarnessError(f"{path}: the suite has no [[bench]] entries")
    return benches


def dedupe(cases: list[Case]) -> list[Case]:
    seen, unique = set(), []
    for case in cases:
        ident = (case.key(), case.strategy)
        if ident not in seen:
            seen.add(ident)
            unique.append(case)
    return unique


def override_strategy(cases: list[Case], strategy: str) -> list[Case]:
    """The suite's cases under one strategy instead of theirs (`--strategy`). A known
    failure names the strategy it was written for: a case under another one drops it."""
    return dedupe(
        [replace(c, strategy=strategy, known_failure=_mark_for(c, strategy)) for c in cases]
    )


def series(suite: str, strategy: str | None) -> str:
    """The name a run is stored under: the suite, or, with its cases under one strategy
    instead of theirs (`--strategy`), a series of its own, so the suite's history, the
    HUD's strips and `harness compare SUITE` never mix the two."""
    return f"{suite} --strategy {strategy}" if strategy else suite


def _mark_for(case: Case, strategy: str) -> str | None:
    return case.known_failure if case.strategy == strategy else None


def override_shapes(cases: list[Case], shapes: list[str]) -> list[Case]:
    """The suite's cases at each of the given shapes instead of theirs (`--shapes`); text
    prompts (a checkpoint's tokenizer makes their shape) stay as they are."""
    profiles = [get_shape(name).fields() for name in shapes]
    return dedupe([c if c.prompt_text else replace(c, **p) for c in cases for p in profiles])
