"""optimize-report.json / .md and a plot (throughput ratio and accuracy per variant)."""

from __future__ import annotations

import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torchtide.optimize.pipeline import OptimizeResult, Variant

_PACKAGES = ("torch", "onnx", "onnxruntime", "openvino", "nncf", "numpy")


def _versions() -> dict[str, str]:
    out = {}
    for p in _PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = "not installed"
    return out


def _cpu() -> dict[str, Any]:
    flags: set[str] = set()
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            elif line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    return {"model": model, "cores": os.cpu_count(), "flags": [f for f in wanted if f in flags]}


def variant_dict(v: Variant) -> dict[str, Any]:
    return {
        "name": v.name,
        "tier": v.tier,
        "what": v.what,
        "status": v.status.value,
        "reason": v.reason,
        "build_s": round(v.build_s, 2),
        "load_s": round(v.load_s, 3),
        "size_mb": round(v.size_mb, 2),
        "notes": v.notes,
        "accuracy": v.accuracy.as_dict() if v.accuracy else None,
        "batch_check": v.batch_check.as_dict() if v.batch_check else None,
        "speed": [s.as_dict() for s in v.speed],
    }


def to_dict(r: OptimizeResult) -> dict[str, Any]:
    return {
        "model": r.model,
        "model_dir": str(r.model_dir),
        "source_version": r.source_version,
        "source_kind": r.source_kind,
        "precision": r.precision,
        "objective": r.objective,
        "samples": {"origin": r.samples_origin, "real": r.samples_real, "count": r.sample_count},
        "batch_sizes": r.batch_sizes,
        "winner": r.winner,
        "new_version": r.new_version,
        "version_policy": r.policy_note,
        "warnings": r.warnings,
        "elapsed_s": round(r.elapsed_s, 1),
        "environment": {
            "packages": _versions(),
            "cpu": _cpu(),
            "python": platform.python_version(),
        },
        "variants": [variant_dict(v) for v in r.variants],
    }


def _acc(v: Variant) -> str:
    if v.accuracy is None or not v.accuracy.outputs:
        return "-"
    parts = []
    for o in v.accuracy.outputs:
        s = f"cos {o.cos_mean:.5f}/{o.cos_min:.5f}, max abs {o.max_abs:.1e}"
        if o.top1 is not None:
            s += f" top-1 {o.top1:.1%}"
        parts.append(s)
    return "; ".join(parts)


def _speed(v: Variant) -> str:
    if not v.speed:
        return "-"
    return ", ".join(
        f"b{s.batch}: {s.ratio:.2f}x ({s.spread[0]:.2f}-{s.spread[1]:.2f}, {s.items_s:.0f}/s)"
        for s in v.speed
    )


def markdown(r: OptimizeResult) -> str:
    lines = [
        f"# torchtide optimize: {r.model}",
        "",
        f"- source: version {r.source_version} ({r.source_kind}), precision tier "
        f"`{r.precision}`, objective {r.objective}",
        f"- samples: {r.sample_count} from {r.samples_origin}"
        + ("" if r.samples_real else " (**random**: lossy variants are never selected)"),
        f"- winner: **{r.winner}**"
        + (f", written as version {r.new_version}" if r.new_version else ", nothing written"),
    ]
    if r.policy_note:
        lines.append(
            f"- {r.policy_note}; rollback: `torchtide optimize --rollback "
            f"{r.model_dir}` (deletes version {r.new_version}, restores "
            f"config.pbtxt.v{r.source_version})"
        )
    lines += [f"- warning: {w}" for w in r.warnings]
    lines += [
        "",
        "Speed: the variant's throughput over the served version's, timed interleaved "
        "(ABBA) in one process at the config's thread settings; median of the rounds, the "
        "spread in brackets. The eager row is the baseline against itself (the noise band).",
        "",
        "| variant | tier | status | speed vs eager | accuracy (cos mean/min, max abs) | "
        "build s | MB | reason |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in r.variants:
        lines.append(
            f"| {v.name} | {v.tier} | {v.status.value} | {_speed(v)} | {_acc(v)} | "
            f"{v.build_s:.1f} | {v.size_mb:.1f} | {v.reason.replace('|', '/')} |"
        )
    bg = [s.background_cores for v in r.variants for s in v.speed]
    if bg:
        lines += [
            "",
            f"Other processes used {min(bg):.2f}-{max(bg):.2f} cores during the "
            "timing blocks (a loaded machine widens the spread).",
        ]
    notes = [(v.name, n) for v in r.variants for n in v.notes]
    if notes:
        lines += ["", "Notes:", *(f"- {name}: {n}" for name, n in notes)]
    env = to_dict(r)["environment"]
    lines += [
        "",
        f"Environment: {env['cpu']['model']} ({env['cpu']['cores']} cores, "
        f"{', '.join(env['cpu']['flags']) or 'no avx512/vnni/bf16'}); "
        + ", ".join(f"{k} {ver}" for k, ver in env["packages"].items()),
        "",
    ]
    return "\n".join(lines)


def plot(r: OptimizeResult, path: Path) -> bool:
    """Throughput ratio per variant and batch size, and cosine min; False without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [v for v in r.variants if v.speed or v.accuracy]
    if not shown:
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2), dpi=110)
    width = 0.8 / max(1, len(r.batch_sizes))
    for j, b in enumerate(r.batch_sizes):
        ys = [next((s.ratio for s in v.speed if s.batch == b), 0.0) for v in shown]
        lo = [
            y - next((s.spread[0] for s in v.speed if s.batch == b), y)
            for y, v in zip(ys, shown, strict=True)
        ]
        hi = [
            next((s.spread[1] for s in v.speed if s.batch == b), y) - y
            for y, v in zip(ys, shown, strict=True)
        ]
        xs = [i + j * width for i in range(len(shown))]
        ax1.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=f"batch {b}")
    ax1.axhline(1.0, color="grey", lw=0.8)
    ax1.set_xticks([i + width * (len(r.batch_sizes) - 1) / 2 for i in range(len(shown))])
    ax1.set_xticklabels([v.name for v in shown], rotation=30, ha="right")
    ax1.set_ylabel("throughput / served version")
    ax1.legend()
    cos = [
        min((o.cos_min for o in v.accuracy.outputs), default=0.0) if v.accuracy else 0.0
        for v in shown
    ]
    colors = [
        "tab:green"
        if v.status.value in ("selected", "passed")
        else "tab:orange"
        if v.status.value == "refused"
        else "tab:red"
        for v in shown
    ]
    ax2.bar(range(len(shown)), [max(1e-7, 1 - c) for c in cos], color=colors)
    ax2.set_yscale("log")
    ax2.set_xticks(range(len(shown)))
    ax2.set_xticklabels([v.name for v in shown], rotation=30, ha="right")
    ax2.set_ylabel("1 - min cosine (lower is closer)")
    ax2.set_title("accuracy (green passed, red failed, orange refused)", fontsize=9)
    fig.suptitle(f"torchtide optimize: {r.model} (winner: {r.winner})")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def write_reports(r: OptimizeResult, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "optimize-report.json", out_dir / "optimize-report.md"]
    paths[0].write_text(json.dumps(to_dict(r), indent=2), encoding="utf-8")
    paths[1].write_text(markdown(r), encoding="utf-8")
    png = out_dir / "optimize-report.png"
    if plot(r, png):
        paths.append(png)
    return paths
