"""`optimize()`: build every variant, gate its accuracy against the served version, time it
against the served version in the same process, pick the winner and publish it as a new
version folder, with a report."""

from __future__ import annotations

import enum
import functools
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from torchtide.optimize import samples as samplesmod
from torchtide.optimize.candidates import (
    CANDIDATES,
    TIERS_FOR_PRECISION,
    BuildContext,
    Built,
    Candidate,
    Unavailable,
    _short,
)
from torchtide.optimize.gates import Tier, Verdict, judge
from torchtide.optimize.samples import Sample, Samples
from torchtide.optimize.source import Runner, Source, load_runner, open_source
from torchtide.optimize.timing import Speed, TimingOptions, ab

log = logging.getLogger("torchtide.optimize")

Outputs = dict[str, np.ndarray[Any, Any]]
UserGate = Callable[[list[Outputs], list[Outputs]], "str | None"]
DEFAULT_BATCH_CAP = 8  # largest batch timed when the config names no preferred size
BATCH_CHECK_SHAPES = 4  # sample shapes (the most common) run as batch-N for consistency


class Status(enum.Enum):
    SELECTED = "selected"
    PASSED = "passed"  # passed its gate, not the fastest (or not enough faster)
    REFUSED = "refused"  # passed, but a lossy tier on random data cannot be selected
    FAILED = "failed"  # failed its gate, or to build/load/run
    SKIPPED = "skipped"  # not built here: the reason says why


@dataclass(slots=True)
class Variant:
    name: str
    tier: str
    what: str
    status: Status = Status.SKIPPED
    reason: str = ""
    build_s: float = 0.0
    load_s: float = 0.0
    size_mb: float = 0.0
    notes: list[str] = field(default_factory=list)
    accuracy: Verdict | None = None
    batch_check: Verdict | None = None
    speed: list[Speed] = field(default_factory=list)
    built: Built | None = None

    def ratio(self, objective: str) -> float | None:
        if not self.speed:
            return None
        s = self.speed[0] if objective == "latency" else self.speed[-1]
        return s.ratio


@dataclass(slots=True)
class OptimizeOptions:
    precision: str = "fp32"  # fp32 (lossless) | bf16 | int8
    candidates: Sequence[str] | None = None  # None: all of CANDIDATES
    samples: Path | None = None  # a data file (bench JSON format, or .npz)
    sample_items: Sequence[dict[str, Any]] | None = None  # Python API samples
    num_generated: int = samplesmod.DEFAULT_GENERATED
    objective: str = "throughput"  # throughput (largest batch) | latency (batch 1)
    min_gain: float = 1.05  # a variant must be this much faster than the baseline
    select: str | None = None  # choose this variant if it passes its gate, whatever its speed
    latency_budget_ms: float | None = None  # largest-batch call latency a winner may take
    batch_sizes: Sequence[int] | None = None
    timing: TimingOptions = field(default_factory=TimingOptions)
    dry_run: bool = False
    time_failed: bool = False  # also time variants that failed their accuracy gate (never chosen)
    report_dir: Path | None = None  # default <model>/optimize/
    work_dir: Path | None = None  # default a temporary folder, removed afterwards
    user_gate: UserGate | None = None  # (baseline outputs, variant outputs) -> failure or None
    extra: Sequence[Candidate] = ()  # more variants (Python API)


@dataclass(slots=True)
class OptimizeResult:
    model: str
    model_dir: Path
    source_version: int
    source_kind: str
    precision: str
    objective: str
    samples_origin: str
    samples_real: bool
    sample_count: int
    batch_sizes: list[int]
    variants: list[Variant]
    winner: str
    new_version: int | None = None
    policy_note: str = ""
    warnings: list[str] = field(default_factory=list)
    reports: list[Path] = field(default_factory=list)
    elapsed_s: float = 0.0


class Progress:
    """What the optimizer tells the terminal; the default logs."""

    def step(self, variant: str, text: str) -> None:
        log.info("%s: %s", variant, text)

    def warn(self, text: str) -> None:
        log.warning("%s", text)

    def done(self, variant: Variant) -> None:
        log.info("%s: %s %s", variant.name, variant.status.value, variant.reason)


class OptimizeError(RuntimeError):
    """The optimization could not run (the baseline cannot run its samples, ...)."""


def optimize(
    model_dir: str | Path,
    options: OptimizeOptions | None = None,
    *,
    module: Any = None,
    progress: Progress | None = None,
) -> OptimizeResult:
    """Optimize the model in `model_dir` (a folder of a Triton model repository). `module`,
    an nn.Module computing the same thing as the served version, is what the converters
    start from when given (the served file otherwise)."""
    opts = options or OptimizeOptions()
    prog = progress or Progress()
    if opts.precision not in TIERS_FOR_PRECISION:
        raise ValueError(f"precision must be one of {', '.join(TIERS_FOR_PRECISION)}")
    if opts.objective not in ("throughput", "latency"):
        raise ValueError("objective must be throughput or latency")
    t0 = time.perf_counter()
    src = open_source(Path(model_dir), module)
    samples = _samples(src, opts, prog)
    batch_sizes = list(opts.batch_sizes or _batch_sizes(src))
    catalog = {**CANDIDATES, **{c.name: c for c in opts.extra}}
    names = list(opts.candidates) if opts.candidates else list(catalog)
    unknown = [n for n in names if n not in catalog]
    if unknown:
        raise ValueError(f"unknown candidate '{unknown[0]}' (known: {', '.join(catalog)})")
    if opts.select and opts.select not in names:
        raise ValueError(f"--select {opts.select}: not among the candidates tried")
    if "eager" not in names:
        names.insert(0, "eager")
    own_work = opts.work_dir is None
    work = Path(tempfile.mkdtemp(prefix="torchtide-optimize-")) if own_work else opts.work_dir
    assert work is not None
    result = OptimizeResult(
        src.name,
        src.model_dir,
        src.version,
        src.kind,
        opts.precision,
        opts.objective,
        samples.origin,
        samples.real,
        len(samples.items),
        batch_sizes,
        [],
        "eager",
    )
    if not samples.real:
        result.warnings.append(samplesmod.RANDOM_WARNING)
    try:
        _run(src, samples, opts, prog, catalog, names, work, result)
        _publish(src, opts, result)
    finally:
        if own_work:
            shutil.rmtree(work, ignore_errors=True)
    result.elapsed_s = time.perf_counter() - t0
    from torchtide.optimize.report import write_reports

    result.reports = write_reports(result, opts.report_dir or src.model_dir / "optimize")
    return result


def _samples(src: Source, opts: OptimizeOptions, prog: Progress) -> Samples:
    cfg = src.config
    if opts.sample_items is not None:
        items = samplesmod.check(cfg, list(opts.sample_items), "samples")
        return Samples(items, True, f"Python API ({len(items)} samples)")
    if opts.samples is not None:
        return samplesmod.from_file(cfg, opts.samples)
    warm = samplesmod.from_warmup(cfg, src.model_dir)
    if warm is not None and warm.real:
        return warm
    generated = samplesmod.generated(cfg, opts.num_generated)
    prog.warn(samplesmod.RANDOM_WARNING)
    return generated


def _batch_sizes(src: Source) -> list[int]:
    mbs = int(src.config.max_batch_size)
    if mbs <= 0:
        return [1]
    preferred = [
        int(p)
        for p in src.config.dynamic_batching.preferred_batch_size
        if 1 < p <= mbs and p != mbs
    ]
    big = max(preferred) if preferred else min(mbs, DEFAULT_BATCH_CAP)
    return [1] if big <= 1 else [1, big]


def _strip(out: Outputs, batched: bool) -> Outputs:
    return {k: v[0] for k, v in out.items()} if batched else out


def _run_all(runner: Runner, items: Sequence[Sample], batched: bool) -> list[Outputs]:
    return [_strip(runner(s), batched) for s in items]


def _run(
    src: Source,
    samples: Samples,
    opts: OptimizeOptions,
    prog: Progress,
    catalog: dict[str, Candidate],
    names: list[str],
    work: Path,
    result: OptimizeResult,
) -> None:
    prog.step("eager", f"loading the served version {src.version} ({src.kind})")
    base = load_runner(src.model_dir)
    try:
        prog.step("eager", f"running {len(samples.items)} samples")
        try:
            ref = _run_all(base, samples.items, src.batched)
        except Exception as e:
            raise OptimizeError(f"the served version fails on the samples: {_short(e)}") from e
        allowed = TIERS_FOR_PRECISION[opts.precision]
        ctx = BuildContext(src, samples, work, lambda text: None)
        for name in names:
            cand = catalog[name]
            v = Variant(name, cand.tier.value, cand.what)
            result.variants.append(v)
            ctx.step = lambda text, n=name: prog.step(n, text)  # type: ignore[misc]
            _evaluate(v, cand, ctx, base, ref, allowed, opts, prog, result.batch_sizes)
            prog.done(v)
    finally:
        base.close()
    _select(result, opts)


def _evaluate(
    v: Variant,
    cand: Candidate,
    ctx: BuildContext,
    base: Runner,
    ref: list[Outputs],
    allowed: tuple[Tier, ...],
    opts: OptimizeOptions,
    prog: Progress,
    batch_sizes: list[int],
) -> None:
    src, samples = ctx.source, ctx.samples
    if cand.tier not in allowed:
        v.reason = (
            f"{cand.tier.value} tier not requested (--precision {opts.precision}; "
            f"use --precision {cand.tier.value})"
        )
        return
    runner = base
    if cand.name != "eager":
        prog.step(cand.name, "building")
        try:
            built = ctx.cache.get(cand.name) or cand.build(ctx)
            ctx.cache[cand.name] = built
            if isinstance(built, Exception):
                raise built
        except Unavailable as e:
            v.reason = str(e)
            return
        except Exception as e:
            log.debug("%s: build failed", cand.name, exc_info=e)
            v.status, v.reason = Status.FAILED, f"build failed: {_short(e)}"
            return
        v.built, v.build_s, v.notes = built, built.build_s, built.notes
        v.size_mb = (
            sum(p.stat().st_size for p in (built.model_dir / "1").rglob("*") if p.is_file()) / 1e6
        )
        prog.step(cand.name, "loading with its backend")
        t = time.perf_counter()
        try:
            runner = load_runner(built.model_dir)
        except Exception as e:
            v.status, v.reason = Status.FAILED, f"load failed: {_short(e)}"
            return
        v.load_s = time.perf_counter() - t
    try:
        _gate_and_time(v, cand, src, samples, base, runner, ref, opts, prog, batch_sizes)
    finally:
        if runner is not base:
            runner.close()


def _gate_and_time(
    v: Variant,
    cand: Candidate,
    src: Source,
    samples: Samples,
    base: Runner,
    runner: Runner,
    ref: list[Outputs],
    opts: OptimizeOptions,
    prog: Progress,
    batch_sizes: list[int],
) -> None:
    prog.step(cand.name, f"accuracy gate ({cand.tier.value}) on {len(samples.items)} samples")
    try:
        got = _run_all(runner, samples.items, src.batched)
        v.accuracy = judge(ref, got, cand.tier, src.label_files())
        if opts.user_gate is not None and v.accuracy.passed:
            why = opts.user_gate(ref, got)
            if why:
                v.accuracy.passed = False
                v.accuracy.failures.append(f"user gate: {why}")
        v.batch_check = _batch_check(runner, samples, got, src, cand.tier, max(batch_sizes))
    except Exception as e:
        v.status, v.reason = Status.FAILED, f"run failed: {_short(e)}"
        return
    failures = [
        *v.accuracy.failures,
        *(f"batch-{max(batch_sizes)} vs batch-1: {f}" for f in v.batch_check.failures),
    ]
    if failures:
        v.status, v.reason = Status.FAILED, "; ".join(failures[:3])
        if not opts.time_failed:
            return
    else:
        v.status = Status.PASSED
    if v.status is Status.PASSED and cand.tier is not Tier.LOSSLESS and not samples.real:
        v.status = Status.REFUSED
        v.reason = f"{cand.tier.value} is never selected on random samples (give --samples)"
    for b in batch_sizes:
        prog.step(cand.name, f"timing batch {b} against the baseline (interleaved)")
        inputs = samplesmod.batch_of(samples.items, b)
        try:
            v.speed.append(
                ab(
                    functools.partial(base, inputs),
                    functools.partial(runner, inputs),
                    b,
                    opts.timing,
                )
            )
        except Exception as e:
            v.speed.clear()
            v.status, v.reason = Status.FAILED, f"timing run failed: {_short(e)}"
            return


def _batch_check(
    runner: Runner, samples: Samples, single: list[Outputs], src: Source, tier: Tier, size: int
) -> Verdict:
    """Rows of one batch against the same samples run one at a time (catches a batch or
    shape specialised at export time, and rows that see each other), for the most common
    sample shapes (every shape already ran at batch 1)."""
    if not src.batched or size <= 1:
        return Verdict(True)
    index = {id(s): i for i, s in enumerate(samples.items)}
    one: list[Outputs] = []
    many: list[Outputs] = []
    for group in samplesmod.by_shape(samples.items)[:BATCH_CHECK_SHAPES]:
        chosen = [group[i % len(group)] for i in range(size)]
        out = runner(samplesmod.stack(chosen))
        for row, s in enumerate(chosen):
            many.append({k: a[row] for k, a in out.items()})
            one.append(single[index[id(s)]])
    return judge(one, many, tier, src.label_files())


def _select(result: OptimizeResult, opts: OptimizeOptions) -> None:
    best: Variant | None = None
    if opts.select:
        chosen = next((v for v in result.variants if v.name == opts.select), None)
        if chosen is not None and chosen.status is Status.PASSED and chosen.name != "eager":
            best = chosen
        elif chosen is not None and chosen.name != "eager":
            result.warnings.append(
                f"--select {opts.select}: not chosen, it {chosen.status.value}: {chosen.reason}"
            )
    for v in result.variants if best is None and not opts.select else []:
        if v.name == "eager" or v.status is not Status.PASSED or not v.speed:
            continue
        why = _not_eligible(v, opts)
        if why:
            v.reason = why
            continue
        if best is None or (v.ratio(opts.objective) or 0) > (best.ratio(opts.objective) or 0):
            best = v
    for v in result.variants:
        if v.status is Status.PASSED and v is not best and not v.reason:
            v.reason = "passed, slower than the winner" if best else "passed"
    if best is not None:
        best.status = Status.SELECTED
        best.reason = (
            "chosen with --select; passed its gate"
            if opts.select
            else f"fastest by {opts.objective} among the variants that passed"
        )
        result.winner = best.name
    else:
        eager = next(v for v in result.variants if v.name == "eager")
        if eager.status is Status.PASSED:
            eager.status = Status.SELECTED
            eager.reason = "no variant was clearly faster and passed its gate: nothing to write"
        else:
            result.warnings.append(f"the served version itself failed its checks: {eager.reason}")


def _not_eligible(v: Variant, opts: OptimizeOptions) -> str:
    """Why a variant that passed its gate cannot win (over the latency budget, or not clearly
    faster than the served version), or ''."""
    big = v.speed[-1]
    latency_ms = 1000.0 * big.batch / max(big.items_s, 1e-9)
    if opts.latency_budget_ms is not None and latency_ms > opts.latency_budget_ms:
        return (
            f"batch {big.batch} takes {latency_ms:.1f} ms, over the "
            f"{opts.latency_budget_ms:g} ms budget"
        )
    s = v.speed[0] if opts.objective == "latency" else big
    if s.ratio < opts.min_gain or s.spread[0] <= 1.0:
        return (
            f"{s.ratio:.2f}x (spread {s.spread[0]:.2f}-{s.spread[1]:.2f}) is not clearly "
            f"faster (needs >= {opts.min_gain:.2f}x, spread above 1)"
        )
    return ""


def _publish(src: Source, opts: OptimizeOptions, result: OptimizeResult) -> None:
    if result.winner == "eager" or opts.dry_run:
        return
    from torchtide.optimize.writer import publish

    v = next(x for x in result.variants if x.name == result.winner)
    assert v.built is not None
    provenance = {
        "variant": v.name,
        "tier": v.tier,
        "what": v.what,
        "notes": v.notes,
        "accuracy": v.accuracy.as_dict() if v.accuracy else None,
        "speed": [s.as_dict() for s in v.speed],
        "samples": result.samples_origin,
    }
    result.new_version, result.policy_note = publish(
        src.model_dir, v.built.model_dir, src.version, provenance
    )
