"""`torchtide bench --repeat` and `--compare BASELINE.json`: the judgement (thresholds, the noise
band of repeated runs) and whole runs against a real served model."""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from rich.console import Console

from tests.conftest import start_app
from tests.models import write_add_sub
from torchtide.app import AppThread
from torchtide.bench import compare
from torchtide.bench.command import EXIT_REGRESSION, cmd_bench, given_options, judge, parser
from torchtide.bench.runner import Mode, Step, StepResult

FAST = ["--warmup", "0.2", "--duration", "0.6", "-q"]


def result(value: int, tput: float, p99: float, runs: tuple[float, ...] = ()) -> StepResult:
    lat = {"p50": p99 / 2, "p90": p99, "p95": p99, "p99": p99, "mean": p99 / 2, "max": p99}
    return StepResult(Step(Mode.CONCURRENCY, value), 1.0, 10, 0, {}, tput, lat, 1.0, 1.0,
                      throughput_runs=runs or (tput,), p99_runs=(p99,))  # fmt: skip


def baseline(tmp_path: Path, steps: list[dict[str, Any]], **info: Any) -> compare.Baseline:
    path = tmp_path / "base.json"
    path.write_bytes(orjson.dumps({"model": "add_sub", **info, "steps": steps}))
    return compare.load(path)


def step(value: int, tput: float, p99: float, runs: list[float] | None = None) -> dict[str, Any]:
    return {"mode": "concurrency", "value": value, "throughput": tput, "p99_ms": p99,
            "runs": {"throughput": runs or [tput], "p99_ms": [p99]}}  # fmt: skip


# ------------------------------------------------------------------ the judgement


def test_band_is_the_relative_spread() -> None:
    assert compare.band([100.0]) == 0.0
    assert compare.band([90.0, 100.0, 110.0]) == pytest.approx(0.2)
    assert compare.band([math.nan, 50.0]) == 0.0


def test_threshold_and_noise_band_decide(tmp_path: Path) -> None:
    base = baseline(tmp_path, [step(1, 1000, 2.0), step(8, 1000, 10.0, [800, 1000, 1200])])
    # c=1: a 15% fall beyond the 10% threshold; c=8: a 30% fall inside its 40% noise band
    found = compare.deltas(base, [result(1, 850, 2.0), result(8, 700, 10.0)], 0.10, 0.25)
    assert [d.tput_regressed for d in found] == [True, False]
    assert found[0].tput_change == pytest.approx(-0.15)
    assert found[1].tput_allowed == pytest.approx(0.4)
    # the band of the current runs counts too
    noisy = result(1, 850, 2.0, (600.0, 850.0, 900.0))
    assert not compare.deltas(base, [noisy, result(8, 1000, 10.0)], 0.10, 0.25)[0].regressed
    # p99: a rise beyond its threshold; no successful request at all is a regression
    slow = compare.deltas(base, [result(1, 1000, 2.6), result(8, 1000, math.nan)], 0.1, 0.25)
    assert [d.p99_regressed for d in slow] == [True, True]
    assert not any(d.tput_regressed for d in slow)
    # a step that did not run (the run stopped) regresses
    [missing, _] = compare.deltas(base, [result(8, 1000, 10.0)], 0.1, 0.25)
    assert missing.missing and missing.regressed
    # faster and quicker is never a regression
    assert not any(
        d.regressed
        for d in compare.deltas(base, [result(1, 5000, 0.1), result(8, 5000, 0.1)], 0.1, 0.25)
    )


def test_a_band_too_wide_is_reported(tmp_path: Path) -> None:
    base = baseline(tmp_path, [step(1, 1000, 2.0, [400, 1000, 1500])])
    args = parser().parse_args(["add_sub", "--repeat", "3"])
    out, err = io.StringIO(), io.StringIO()
    regressed = judge(args, Console(file=out, width=200), Console(file=err, width=200), base,
                      [result(1, 600, 2.0)])  # fmt: skip
    assert not regressed  # -40% is inside the 110% spread of the baseline's runs
    assert "the runs of c=1 spread by 50% or more: too noisy" in err.getvalue()
    assert "no regression against the baseline" in out.getvalue()


def test_median_of_repeated_runs() -> None:
    runs = [result(1, t, p) for t, p in ((100, 5.0), (300, 1.0), (200, 3.0))]
    runs[0].errors, runs[0].error_messages = 2, {"boom": 2}
    m = StepResult.median_of(runs)
    assert m.throughput == 200 and m.latency_ms["p99"] == 3.0
    assert m.throughput_runs == (100, 300, 200) and m.p99_runs == (5.0, 1.0, 3.0)
    assert m.errors == 2 and m.error_messages == {"boom": 2} and m.requests == 30


def test_baseline_settings_are_taken_unless_given(tmp_path: Path) -> None:
    base = baseline(tmp_path, [step(2, 10, 1), step(4, 10, 1)], protocol="grpc", duration_s=3.0,
                    batch_size_arg=4, inputs={"text_file": str(tmp_path / "t.txt")})  # fmt: skip
    argv = ["--compare", "base.json", "-i", "http", "--duration", "1"]
    args = parser().parse_args(argv)
    differ = compare.apply(base, args, given_options(argv))
    assert args.model == "add_sub" and args.concurrency == [2, 4] and args.batch_size == 4
    assert args.protocol == "http" and args.duration == 1.0  # given: kept
    assert args.text_file == tmp_path / "t.txt"
    assert differ == ["protocol http (baseline grpc)", "duration 1.0 (baseline 3.0)"]
    argv = ["--compare", "base.json", "--concurrency", "8"]
    with pytest.raises(compare.BaselineError, match="re-runs the baseline's steps"):
        compare.apply(base, parser().parse_args(argv), given_options(argv))


def test_unusable_baselines_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.json"
    cases = {
        "missing.json": "cannot read",
        "notjson": "is not JSON",
        "nosteps": "is not a `torchtide bench --json` file (no steps)",
        "nomodel": "names no model",
        "badstep": "step 1 has no mode, value and throughput",
    }
    docs: dict[str, bytes] = {
        "notjson": b"{",
        "nosteps": b'{"model": "m", "steps": []}',
        "nomodel": orjson.dumps({"steps": [step(1, 1, 1)]}),
        "badstep": orjson.dumps({"model": "m", "steps": [{"mode": "x"}]}),
    }
    for name, why in cases.items():
        path = tmp_path / name
        if name in docs:
            path.write_bytes(docs[name])
        assert cmd_bench(["--compare", str(path), *FAST]) == 2, name
        assert why in capsys.readouterr().err, name
    bad.write_bytes(orjson.dumps({"model": "m", "steps": [step(1, 1, 1)]}))
    assert cmd_bench(["--compare", str(bad), "--repeat", "0", *FAST]) == 2
    assert "--repeat must be at least 1" in capsys.readouterr().err
    assert cmd_bench(FAST) == 2
    assert "the model name is required" in capsys.readouterr().err


# ------------------------------------------------------------------ against a real server


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppThread]:
    repo = tmp_path_factory.mktemp("repo")
    write_add_sub(repo)
    a = start_app(repo)
    yield a
    a.stop()


def test_a_baseline_with_repeats_then_compared(
    app: AppThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gurl = f"127.0.0.1:{app.app.port('grpc')}"
    base = tmp_path / "base.json"
    rc = cmd_bench(["add_sub", "-i", "grpc", "-u", gurl, "--concurrency", "1,2", "--repeat", "2",
                    "--json", str(base), *FAST])  # fmt: skip
    assert rc == 0
    doc = orjson.loads(base.read_bytes())
    assert doc["repeat"] == 2 and doc["protocol"] == "grpc"
    for s in doc["steps"]:
        assert len(s["runs"]["throughput"]) == 2 and len(s["runs"]["p99_ms"]) == 2
        assert min(s["runs"]["throughput"]) <= s["throughput"] <= max(s["runs"]["throughput"])
    assert "median of 2 runs" in capsys.readouterr().out

    # Against itself: no regression. The thresholds are wide because this machine is shared
    # and its speed swings between two runs (p99 of 0.6 s steps by 10x and more); the
    # judgement itself is tested above.
    again = tmp_path / "again.json"
    rc = cmd_bench(["-u", gurl, "--compare", str(base), "--threshold", "90", "--p99-threshold",
                    "100000", "--repeat", "2", "--json", str(again), *FAST])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "no regression against the baseline" in out
    assert "baseline" in out and "allowed" in out and "c=2" in out
    redo = orjson.loads(again.read_bytes())
    assert redo["protocol"] == "grpc"  # the baseline's, not the default
    assert [s["value"] for s in redo["steps"]] == [1, 2]


def test_a_faster_baseline_fails_with_a_delta_table(
    app: AppThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"127.0.0.1:{app.app.port('http')}"
    base = tmp_path / "base.json"
    assert (
        cmd_bench(["add_sub", "-u", url, "--concurrency", "1,4", "--json", str(base), *FAST]) == 0
    )
    doc = orjson.loads(base.read_bytes())
    doc["steps"][1]["throughput"] *= 1000  # a baseline that claims far more than this server does
    doc["steps"][1]["runs"]["throughput"] = [doc["steps"][1]["throughput"]]
    base.write_bytes(orjson.dumps(doc))
    capsys.readouterr()
    rc = cmd_bench(["-u", url, "--compare", str(base), "--repeat", "1", "--threshold", "90",
                    "--p99-threshold", "100000", *FAST])  # fmt: skip
    assert rc == EXIT_REGRESSION == 3
    captured = capsys.readouterr()
    assert "REGRESSION (throughput" in captured.out, captured
    assert re.search(r"-(99\.\d|100\.0)%", captured.out)  # the change column
    assert re.search(r"regression at concurrency 4: throughput -(99\.\d|100\.0)%", captured.err)

    doc["steps"][1]["throughput"] /= 1000
    doc["steps"][1]["runs"]["throughput"] = [doc["steps"][1]["throughput"]]
    doc["steps"][0]["p99_ms"] /= 1e6  # and one that claims a p99 no server reaches
    doc["steps"][0]["runs"]["p99_ms"] = [doc["steps"][0]["p99_ms"]]
    base.write_bytes(orjson.dumps(doc))
    rc = cmd_bench(["-u", url, "--compare", str(base), "--repeat", "1", "--threshold", "90",
                    "--p99-threshold", "100000", *FAST])  # fmt: skip
    assert rc == 3
    err = capsys.readouterr().err
    assert re.search(r"regression at concurrency 1: .*p99 \+", err), err


def test_compare_refuses_new_steps(app: AppThread, tmp_path: Path) -> None:
    base = tmp_path / "base.json"
    base.write_bytes(orjson.dumps({"model": "add_sub", "steps": [step(1, 1, 1)]}))
    url = f"127.0.0.1:{app.app.port('http')}"
    assert cmd_bench(["-u", url, "--compare", str(base), "--concurrency", "2", *FAST]) == 2
