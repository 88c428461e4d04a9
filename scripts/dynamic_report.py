"""Static pruning alone against static pruning plus dynamic block skipping, image by image at batch 1.

One static plan (``--plan PLAN.json``, or ``--uniform RATIO``; 0 keeps the dense model) is applied, its BatchNorm
recalibrated and the model fine-tuned with the shared recipe. Then skip gates are added to it and trained with its
backbone frozen (``--gate-epochs``), then optionally jointly with the backbone (``--joint-epochs``; the static model
then gets as many extra fine-tuning epochs, for a fair row). Finally every model is timed image by image on the test
split (batch 1, one thread) in one pass, taking turns every 25 images: the static model(s) and the gated model at each
threshold of ``--thresholds``, with real skipping. Reported: accuracy, measured mean latency, the expected latency
from the measured parts, per-block execution rates, and accuracy and latency by the number of blocks an image used.
``--retime`` times the models again (a timing made while the host was busy is skewed). Whenever the
models are timed again (``--retime``, other ``--thresholds`` or ``--compare``, a newer timing method), the earlier
timing stays in the report (``earlier_timings``) and the table lists them all. The static models, the gates and the
timing are saved as soon as they exist, and the long trainings (the static model's extra epochs, the gates) after
every epoch; re-running resumes.

To compare at equal accuracy, static pruning at other ratios can be timed in the same pass: make each with
``--static-only`` in its own folder (same epochs), then pass the folders to ``--compare``; the table then sets each
gated setting against static pruning alone at the same accuracy (see ``_iso_accuracy_lines``).

Usage:
    python -m scripts.dynamic_report --model resnet56 --checkpoint C --data cifar10 --uniform 0.3 \\
        --finetune-epochs 2 --joint-epochs 2 --thresholds 0.3 0.5 0.7 --out runs/dynamic_resnet56
"""

from __future__ import annotations

import argparse
import copy
import json
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from hardware_models.dynamic import measure_parts
from hardware_models.measure import torch_threads
from pruning_core.checkpoint import load_torch, save_torch
from pruning_core.data import atomic_write_bytes
from pruning_core.dynamic import (
    DEFAULT_SEARCH_LEVELS,
    DynamicParts,
    add_gates,
    gated_blocks,
    profile_from_rows,
    search_thresholds,
    set_thresholds,
    time_models_per_image,
    train_gates,
)
from pruning_core.finetune import finetune_model, finetune_recipe, prune_and_finetune
from pruning_core.plan import PruningPlan
from pruning_core.serialize import load_pruned, save_pruned
from scripts.cli import add_target_args, env_from_args

_TIMED_KEYS = ("timing", "static", "static_equal", "compare", "dynamic")
"""What one timing pass writes into the report (kept under ``earlier_timings`` when the models are timed again)."""
REPORT_VERSION = 2
"""2: every model is timed in one pass (static, static_equal, each threshold), taking turns."""
TIMING_METHOD = 7
"""How the final pass times the models (1: turns on every image; 2: turns every 25 images, each turn after one
untimed call, and each block of the expected figure timed alone; 3: execution rates read before the parts are
measured, which reset the counters, and counters left by gate training cleared; 4: the parts timed in turn with the
static model, which carries them over to the pass; 5: each block's part its share of the whole model with every
block run less the static part; 6: the reference put in eval mode before timing, not in every timed call; 7: the gate
folded into one dot product and the counters kept out of nn.Module.__setattr__: asking every gate, every block run,
cost 1.16-1.22x the static model in the resnet56 reports timed by method 6, and 1.06-1.14x by method 7). A report
timed by another method is timed again; nothing is trained again."""


def _static_row(rows: list[tuple[int, int, float]]) -> dict[str, Any]:
    """Accuracy and mean latency of a model without gates, from its per-image rows.

    >>> _static_row([(0, 1, 2.0), (0, 0, 4.0)])
    {'top1': 0.5, 'latency_ms_measured': 3.0, 'images': 2}
    """
    return {
        "top1": sum(r[1] for r in rows) / len(rows),
        "latency_ms_measured": sum(r[2] for r in rows) / len(rows),
        "images": len(rows),
    }


def _compared_model(folder: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The static model of another report folder, with its extra epochs when it has them, and how it was made."""
    if not (folder / "static" / "structure.json").exists():
        raise SystemExit(f"--compare expected a report folder with a static model in {folder}/static; found none")
    loaded = load_pruned(folder / "static")
    model, extra = loaded.model, 0
    settings = json.loads((folder / "report.json").read_text()).get("settings", {})
    if (folder / "static_equal.pt").exists():
        model.load_state_dict(load_torch(folder / "static_equal.pt"))
        extra = int(settings.get("joint_epochs", 0))
    described = {
        "uniform": settings.get("uniform"),
        "plan": settings.get("plan"),
        "macs_ratio": loaded.meta["macs"] / loaded.meta["base_macs"],
        "extra_epochs": extra,
    }
    return model.eval(), described


def _setting(row: dict[str, Any]) -> str:
    """How a gated row is named: its one threshold, or the label of per-block thresholds found by search.

    >>> _setting({"threshold": 0.5}), _setting({"threshold": None, "label": "per-block 2"})
    ('0.50', 'per-block 2')
    """
    return f"{row['threshold']:.2f}" if row.get("threshold") is not None else str(row["label"])


def _iso_accuracy_lines(report: dict[str, Any]) -> list[str]:
    """Each gated setting against static pruning alone at the same test accuracy, as Markdown rows.

    Only the static-only frontier counts (the models no other static one beats in both). The rival is the fastest
    of: every frontier model within 0.5 points, every more accurate one that is also faster (it beats the gated
    setting), and the frontier (the models no other
    static one beats in both) interpolated linearly at the gated accuracy between the two frontier models around it.
    With neither, no comparison.

    >>> report = {"static": {"top1": 0.87, "latency_ms_measured": 10.0}, "compare": [
    ...     {"top1": 0.85, "latency_ms_measured": 8.0, "uniform": 0.5, "extra_epochs": 2}], "dynamic": [
    ...     {"threshold": 0.3, "top1": 0.853, "latency_ms_measured": 6.0},
    ...     {"threshold": 0.2, "top1": 0.86, "latency_ms_measured": 7.0}]}
    >>> _iso_accuracy_lines(report)[2]
    '| 0.30 | 0.8530 | 6.000 | uniform 0.5, +2 epochs | 0.8500 | 8.000 | -25.0% |'
    >>> _iso_accuracy_lines(report)[3].split(" | ")[3:]
    ['interpolated: uniform 0.5, +2 epochs (0.8500) to this static plan (0.8700)', '0.8600', '9.000', '-22.2% |']
    """
    statics = [("this static plan", report["static"])]
    if "static_equal" in report:
        statics.append((f"this static plan, +{report['static_equal']['extra_epochs']} epochs", report["static_equal"]))
    for row in report.get("compare", []):
        name = f"uniform {row['uniform']:g}" if row.get("uniform") is not None else f"plan {row.get('plan')}"
        statics.append((name + (f", +{row['extra_epochs']} epochs" if row.get("extra_epochs") else ""), row))
    frontier = [
        (name, s)
        for name, s in statics
        if not any(o["latency_ms_measured"] < s["latency_ms_measured"] and o["top1"] >= s["top1"] for _, o in statics)
    ]
    lines = [
        "| threshold | test top-1 | mean latency ms | fastest static only as accurate (+-0.5 points) or better | "
        "its test top-1 | its latency ms | gated vs it |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["dynamic"]:
        accuracy, latency = row["top1"], row["latency_ms_measured"]
        head = f"| {_setting(row)} | {accuracy:.4f} | {latency:.3f} |"
        candidates = [  # within 0.5 points, or more accurate and faster (which beats the gated setting)
            (name, s["top1"], s["latency_ms_measured"])
            for name, s in frontier
            if abs(s["top1"] - accuracy) <= 0.005 or (s["top1"] > accuracy and s["latency_ms_measured"] <= latency)
        ]
        below = [(name, s) for name, s in frontier if s["top1"] < accuracy]
        above = [(name, s) for name, s in frontier if s["top1"] > accuracy]
        if below and above:
            (lo_name, lo), (hi_name, hi) = (
                max(below, key=lambda r: r[1]["top1"]),
                min(above, key=lambda r: r[1]["top1"]),
            )
            share = (accuracy - lo["top1"]) / (hi["top1"] - lo["top1"])
            interpolated = lo["latency_ms_measured"] + share * (hi["latency_ms_measured"] - lo["latency_ms_measured"])
            how = f"interpolated: {lo_name} ({lo['top1']:.4f}) to {hi_name} ({hi['top1']:.4f})"
            candidates.append((how, accuracy, interpolated))
        if not candidates:
            lines.append(f"{head} outside the static-only models' accuracies | | | |")
            continue
        how, rival_top1, rival_ms = min(candidates, key=lambda c: c[2])
        lines.append(f"{head} {how} | {rival_top1:.4f} | {rival_ms:.3f} | {latency / rival_ms - 1:+.1%} |")
    return lines


def _table(report: dict[str, Any]) -> str:
    static = report["static"]
    lines = [
        "| model | threshold | test top-1 | mean latency ms (measured) | expected ms | mean exec rate | vs static |",
        "|---|---|---|---|---|---|---|",
        f"| static only | - | {static['top1']:.4f} | {static['latency_ms_measured']:.3f} | - | 1.000 | - |",
    ]
    if "static_equal" in report:
        equal = report["static_equal"]
        change = equal["latency_ms_measured"] / static["latency_ms_measured"] - 1
        full = report.get("settings", {}).get("joint_full_weight")
        twice = ", which passed each batch twice: gated and every block" if full else ""
        lines.append(
            f"| static only, +{equal['extra_epochs']} fine-tuning epochs (as many as the joint ones{twice}; best val) "
            "| - | "
            f"{equal['top1']:.4f} | {equal['latency_ms_measured']:.3f} | - | 1.000 | {change:+.1%} |"
        )
    for row in report.get("compare", []):
        change = row["latency_ms_measured"] / static["latency_ms_measured"] - 1
        plan = f"uniform {row['uniform']:g}" if row.get("uniform") is not None else f"plan {row.get('plan')}"
        extra = f", +{row['extra_epochs']} epochs" if row.get("extra_epochs") else ""
        lines.append(
            f"| static only, {plan}{extra} (MACs {row['macs_ratio']:.3f} of dense) | - | {row['top1']:.4f} | "
            f"{row['latency_ms_measured']:.3f} | - | 1.000 | {change:+.1%} |"
        )
    for row in report["dynamic"]:
        change = row["latency_ms_measured"] / static["latency_ms_measured"] - 1
        lines.append(
            f"| static + dynamic | {_setting(row)} | {row['top1']:.4f} | {row['latency_ms_measured']:.3f} | "
            f"{row['latency_ms_expected']:.3f} | {row['mean_exec_rate']:.3f} | {change:+.1%} |"
        )
    reference = max(static["top1"], report.get("static_equal", {}).get("top1", 0.0))  # the harder bar
    close = [r for r in report["dynamic"] if r["top1"] >= reference - 0.005]
    if close:
        best = min(close, key=lambda r: r["latency_ms_measured"])
        lines += [
            "",
            f"Fastest setting within 0.5 points of the better static-only accuracy ({reference:.4f}): "
            f"threshold {_setting(best)}, measured mean latency "
            f"{best['latency_ms_measured'] / static['latency_ms_measured'] - 1:+.1%} against static only; "
            f"measured/expected {best['latency_ms_measured'] / best['latency_ms_expected']:.3f}.",
        ]
    elif report["dynamic"]:
        best = max(report["dynamic"], key=lambda r: (r["top1"], -r["latency_ms_measured"]))
        lines += [
            "",
            f"No setting is within 0.5 points of the better static-only accuracy ({reference:.4f}). The most accurate: "
            f"threshold {_setting(best)}, {best['top1'] - reference:+.4f}, measured mean latency "
            f"{best['latency_ms_measured'] / static['latency_ms_measured'] - 1:+.1%} against static only; "
            f"measured/expected {best['latency_ms_measured'] / best['latency_ms_expected']:.3f}.",
        ]
    if report.get("compare") and report["dynamic"]:
        lines += ["", "At equal accuracy (timed in the same pass):", "", *_iso_accuracy_lines(report)]
    if report["dynamic"]:
        lines += ["", f"By number of gated blocks an image executed (threshold {_setting(best)}, test):", ""]
        lines += _by_blocks_table(best["by_blocks_used"], len(best["exec_rate"]))
    searched = [r for r in report["dynamic"] if r.get("threshold") is None]
    if searched:
        lines += ["", "Per-block thresholds found by search on val (`threshold_search.json`), as timed above:", ""]
        lines += _searched_table(searched)
    if report.get("earlier_timings"):
        lines += ["", "Every timing of these models, oldest first (the table above is the last):", ""]
        lines += _timings_table([*report["earlier_timings"], report])
    return "\n".join(lines) + "\n"


def _searched_table(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown rows of the per-block settings: what the search saw on val beside what the test pass measured.

    >>> row = {"label": "per-block 1", "val_top1": 0.87, "val_expected_ms": 5.0, "top1": 0.86,
    ...        "latency_ms_measured": 5.2, "thresholds": {"a": 0.0, "b": 0.5, "c": 0.5}}
    >>> _searched_table([row])[2]
    '| per-block 1 | 0.8700 | 5.000 | 0.8600 | 5.200 | 0: 1, 0.5: 2 |'
    """
    lines = [
        "| setting | val top-1 | val expected ms | test top-1 | test measured ms | blocks per threshold |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        levels = sorted(set(row["thresholds"].values()))
        spread = ", ".join(f"{t:g}: {sum(v == t for v in row['thresholds'].values())}" for t in levels)
        lines.append(
            f"| {row['label']} | {row['val_top1']:.4f} | {row['val_expected_ms']:.3f} | {row['top1']:.4f} | "
            f"{row['latency_ms_measured']:.3f} | {spread} |"
        )
    return lines


def pick_searched(path: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """Up to ``count`` points of a threshold search's path, spread evenly over its expected latencies.

    Only points no other beats in both val accuracy and expected latency are candidates; for each of ``count``
    evenly spaced latencies from the slowest candidate to the fastest, the candidate nearest to it is taken (each at
    most once), slowest first.

    >>> path = [{"top1": 0.9, "expected_ms": 10.0}, {"top1": 0.91, "expected_ms": 9.0},
    ...         {"top1": 0.88, "expected_ms": 7.0}, {"top1": 0.8, "expected_ms": 5.0}]
    >>> [p["expected_ms"] for p in pick_searched(path, 2)]
    [9.0, 5.0]
    """
    front = [
        p
        for p in path
        if not any(
            (o["top1"] >= p["top1"] and o["expected_ms"] < p["expected_ms"])
            or (o["top1"] > p["top1"] and o["expected_ms"] <= p["expected_ms"])
            for o in path
        )
    ]
    front.sort(key=lambda p: -p["expected_ms"])
    if count < 1 or not front:
        return []
    high, low = front[0]["expected_ms"], front[-1]["expected_ms"]
    targets = [high] if count == 1 else [high + (low - high) * i / (count - 1) for i in range(count)]
    picked = [min(front, key=lambda p: abs(p["expected_ms"] - target)) for target in targets]
    return list({id(p): p for p in picked}.values())


def _timings_table(passes: list[dict[str, Any]]) -> list[str]:
    """Markdown rows comparing timing passes of the same models.

    Args:
        passes: Each pass's part of a report (``timing``, ``static``, ``dynamic``), oldest first.

    Returns:
        A header, a rule, and one row per pass: the static model's mean latency and, per threshold, the gated model's
        latency against it and measured / expected.

    >>> row = {"threshold": 0.5, "latency_ms_measured": 4.0, "latency_ms_expected": 5.0}
    >>> _timings_table([{"timing": {"method": 7}, "static": {"latency_ms_measured": 5.0}, "dynamic": [row]}])[2]
    '| 1 | - | 7 | 5.000 | -20.0%, 0.800 |'
    >>> _timings_table([{"static": {"latency_ms_measured": 5.0}, "dynamic": [row]}])[0].split(" | ")[-1]
    '0.50: vs static, measured/expected |'
    """
    settings = list(dict.fromkeys(_setting(r) for p in passes for r in p.get("dynamic", [])))
    lines = [
        "| pass | timed | method | static ms | "
        + " | ".join(f"{t}: vs static, measured/expected" for t in settings)
        + " |",
        "|---|---|---|---|" + "---|" * len(settings),
    ]
    for number, timed in enumerate(passes, 1):
        static = timed["static"]["latency_ms_measured"]
        rows = {_setting(r): r for r in timed.get("dynamic", [])}
        cells = [
            f"{rows[t]['latency_ms_measured'] / static - 1:+.1%}, "
            f"{rows[t]['latency_ms_measured'] / rows[t]['latency_ms_expected']:.3f}"
            if t in rows
            else ""
            for t in settings
        ]
        timing = timed.get("timing", {})
        lines.append(
            f"| {number} | {timing.get('timed', '-')} | {timing.get('method', '-')} | {static:.3f} | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def _by_blocks_table(by_used: dict[Any, dict[str, float]], blocks: int, bins: int = 5) -> list[str]:
    """Markdown rows of images, accuracy and mean latency per range of blocks used (``bins`` equal ranges).

    >>> rows = _by_blocks_table({"2": {"images": 1, "top1": 1.0, "latency_ms": 1.0},
    ...                          "9": {"images": 3, "top1": 0.0, "latency_ms": 3.0}}, 10, bins=2)
    >>> rows[2:]
    ['| 0-5 | 1 | 1.0000 | 1.000 |', '| 6-10 | 3 | 0.0000 | 3.000 |']
    """
    width = -(-(blocks + 1) // bins)
    lines = ["| blocks used | images | test top-1 | mean latency ms |", "|---|---|---|---|"]
    for start in range(0, blocks + 1, width):
        rows = [r for used, r in by_used.items() if start <= int(used) < start + width]
        images = sum(r["images"] for r in rows)
        if images:
            top1 = sum(r["top1"] * r["images"] for r in rows) / images
            latency = sum(r["latency_ms"] * r["images"] for r in rows) / images
            lines.append(f"| {start}-{min(start + width, blocks + 1) - 1} | {images} | {top1:.4f} | {latency:.3f} |")
    return lines


def _plot_exec_rates(report: dict[str, Any], path: Path) -> None:
    """Execution rate of each gated block on the test split, one line per threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for row in report["dynamic"]:
        names = list(row["exec_rate"])
        ax.plot(range(len(names)), [row["exec_rate"][n] for n in names], "o-", ms=3, label=_setting(row))
    if report["dynamic"]:
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
        ax.legend(fontsize=7)
    ax.set_ylabel("fraction of test images executing the block")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"{report['model']}: per-block execution rate")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    static = report["static"]
    ax.scatter([static["latency_ms_measured"]], [static["top1"]], marker="s", color="black", label="static only")
    if "static_equal" in report:
        equal = report["static_equal"]
        label = f"static only, +{equal['extra_epochs']} epochs"
        ax.scatter([equal["latency_ms_measured"]], [equal["top1"]], marker="D", color="grey", label=label)
    others = report.get("compare", [])
    if others:
        ax.scatter(
            [r["latency_ms_measured"] for r in others],
            [r["top1"] for r in others],
            marker="v",
            color="grey",
            label="static only, other ratios (--compare)",
        )
    for kind, rows in (
        ("one threshold", [r for r in report["dynamic"] if r.get("threshold") is not None]),
        ("per-block thresholds", [r for r in report["dynamic"] if r.get("threshold") is None]),
    ):
        if not rows:
            continue
        measured = ax.plot(
            [r["latency_ms_measured"] for r in rows], [r["top1"] for r in rows], "o-", label=f"dynamic, {kind}"
        )
        ax.plot(
            [r["latency_ms_expected"] for r in rows],
            [r["top1"] for r in rows],
            "x--",
            color=measured[0].get_color(),
            label=f"dynamic, {kind} (expected)",
        )
        for r in rows:
            ax.annotate(_setting(r), (r["latency_ms_measured"], r["top1"]), fontsize=7)
    ax.set_xlabel("mean batch-1 latency per test image (ms, 1 thread)")
    ax.set_ylabel("test top-1")
    ax.set_title(f"{report['model']}: dynamic skipping on top of static pruning")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_target_args(parser)
    parser.add_argument("--plan", type=Path, default=None, help="static plan (JSON)")
    parser.add_argument("--uniform", type=float, default=None, help="uniform channel sparsity of the static plan")
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--gate-epochs", type=int, default=2)
    parser.add_argument("--joint-epochs", type=int, default=0, help="then fine-tune backbone and gates jointly")
    parser.add_argument("--joint-lr", type=float, default=0.01)
    parser.add_argument("--rate-penalty", type=float, default=0.5, help="weight of the execution-rate penalty")
    parser.add_argument(
        "--rate-target", type=float, default=None, help="penalise only the mean execution rate above this budget"
    )
    parser.add_argument(
        "--block-target",
        type=float,
        default=None,
        help="instead pull every block's execution rate to this share of each batch (gates must tell inputs apart)",
    )
    parser.add_argument(
        "--joint-distill",
        type=float,
        default=0.0,
        help="weight of distillation from the dense model in the joint epochs (and in the static model's as many)",
    )
    parser.add_argument(
        "--joint-full-weight",
        type=float,
        default=0.0,
        help="weight of the every-block cross-entropy in the joint epochs: each step also runs the batch through every "
        "block, so the backbone stays good with nothing skipped (the sandwich rule; twice the cost per step)",
    )
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.3, 0.5, 0.6, 0.7, 0.8])
    parser.add_argument("--latency-images", type=int, default=2000, help="test images timed one by one")
    parser.add_argument(
        "--search-thresholds",
        type=int,
        default=0,
        metavar="K",
        help="also choose a threshold per block, greedily on val (search_thresholds; saved as threshold_search.json "
        "and reused), and time K of the settings it finds, spread over their expected latencies",
    )
    parser.add_argument(
        "--search-levels",
        type=float,
        nargs="+",
        default=list(DEFAULT_SEARCH_LEVELS),
        help="thresholds a block may take",
    )
    parser.add_argument("--search-images", type=int, default=None, help="val images the search scores on (all)")
    parser.add_argument(
        "--search-device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="where the search runs the model (val accuracy only; latency comes from the parts measured here)",
    )
    parser.add_argument(
        "--search-stop",
        type=float,
        default=0.45,
        help="stop the search once the expected latency is the static part plus this share of every block's time",
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--static-only",
        action="store_true",
        help="stop once the static model (and its extra epochs) is trained and saved: a model to --compare with",
    )
    parser.add_argument(
        "--compare",
        type=Path,
        nargs="+",
        default=[],
        help="other report folders whose static model (with its extra epochs, if any) is timed in the same pass: "
        "static pruning at other ratios, to compare at equal accuracy",
    )
    parser.add_argument(
        "--retime",
        action="store_true",
        help="time the models again although the report holds a timing by the current method (made on a busy host, "
        "say); every earlier timing is kept in the report (earlier_timings) and summarised in the table",
    )
    parser.add_argument(
        "--train-only",
        action="store_true",
        help="stop once the models are trained and saved; a later run times them (on a quiet host)",
    )
    args = parser.parse_args(argv)
    if (args.plan is None) == (args.uniform is None):
        parser.error("expected exactly one of --plan PLAN.json or --uniform RATIO")
    torch.set_num_threads(args.threads or 2)
    env = env_from_args(args)
    engine, dataset = env.engine, env.scorer.dataset
    args.out.mkdir(parents=True, exist_ok=True)
    report_path = args.out / "report.json"
    report: dict[str, Any] = json.loads(report_path.read_text()) if report_path.exists() else {"dynamic": []}
    settings = {
        "model": args.model,
        "checkpoint": str(args.checkpoint),
        "plan": str(args.plan) if args.plan else None,
        "uniform": args.uniform,
        "finetune_epochs": args.finetune_epochs,
        "gate_epochs": args.gate_epochs,
        "joint_epochs": args.joint_epochs,
        "joint_lr": args.joint_lr,
        "rate_penalty": args.rate_penalty,
        "latency_images": args.latency_images,
        "version": REPORT_VERSION,
    }
    if args.joint_distill:  # recorded only when used, so reports made before the option still resume
        settings["joint_distill"] = args.joint_distill
    if args.joint_full_weight:
        settings["joint_full_weight"] = args.joint_full_weight
    if args.rate_target is not None:
        settings["rate_target"] = args.rate_target
    if args.block_target is not None:
        settings["block_target"] = args.block_target
    saved = report.setdefault("settings", settings)
    if saved != settings:  # resuming with other settings would mix rows of two experiments
        changed = sorted(k for k in settings if saved.get(k) != settings[k])
        raise SystemExit(
            f"{args.out} holds a report made with other settings ({', '.join(changed)}); expected the same as before, "
            f"got {', '.join(f'{k}={settings[k]}' for k in changed)}: use another --out"
        )

    def save() -> None:
        atomic_write_bytes(report_path, lambda tmp: tmp.write_text(json.dumps(report, indent=1)))

    static_dir = args.out / "static"
    if (static_dir / "structure.json").exists():  # made here before, or copied from a report with the same static part
        loaded = load_pruned(static_dir)
        model, plan = loaded.model, loaded.plan
        macs_ratio, accuracy = loaded.meta["macs"] / loaded.meta["base_macs"], loaded.meta["accuracy"]
    else:
        plan = (
            PruningPlan.load(args.plan)
            if args.plan
            else PruningPlan.uniform(engine.group_names, args.uniform, round_to=env.granule)
        )
        pruned = prune_and_finetune(engine, plan, dataset, config=finetune_recipe(args.finetune_epochs))
        save_pruned(static_dir, pruned, base_model=args.model, classes=list(dataset.classes))
        model, macs_ratio, accuracy = pruned.model, pruned.macs_ratio, pruned.accuracy
    if "plan" not in report:
        report.update(
            model=args.model,
            plan=json.loads(plan.to_json()),
            macs_ratio=macs_ratio,
            accuracy=accuracy,
            finetune_epochs=args.finetune_epochs,
        )
        save()
    model.eval()

    equal_path = args.out / "static_equal.pt"
    equal = None
    if args.joint_epochs:
        # Joint fine-tuning trains the backbone further; the static model gets as many more epochs, for a fair row.
        equal = copy.deepcopy(model)
        if equal_path.exists():
            equal.load_state_dict(load_torch(equal_path))
        else:
            config = finetune_recipe(args.joint_epochs, lr=args.joint_lr, distill_weight=args.joint_distill)
            teacher = engine.model if args.joint_distill else None
            # keeps the best val epoch, as for the static; saved every epoch, so a killed run resumes
            finetune_model(equal, dataset, config, teacher=teacher, resume=args.out / "static_equal.resume")
            save_torch(equal_path, equal.state_dict())
            (args.out / "static_equal.resume").unlink(missing_ok=True)
        equal.eval()
    if args.static_only:
        print(f"static model saved in {args.out}; pass --compare {args.out} to a report to time it there", flush=True)
        return

    gates_path = args.out / "gates.pt"
    gated = add_gates(model)
    if gates_path.exists():
        gated.load_state_dict(load_torch(gates_path))
    else:
        trained = train_gates(
            gated,
            dataset,
            epochs=args.gate_epochs,
            rate_penalty=args.rate_penalty,
            rate_target=args.rate_target,
            block_target=args.block_target,
            joint_epochs=args.joint_epochs,
            joint_lr=args.joint_lr,
            full_weight=args.joint_full_weight,
            teacher=engine.model if args.joint_distill else None,
            distill_weight=args.joint_distill,
            resume=args.out / "gates.resume",
        )
        save_torch(gates_path, gated.state_dict())
        (args.out / "gates.resume").unlink(missing_ok=True)
        report["gate_training"] = {
            **asdict(trained),
            "epochs": args.gate_epochs,
            "joint_epochs": args.joint_epochs,
            "rate_penalty": args.rate_penalty,
            "rate_target": args.rate_target,
            "block_target": args.block_target,
            "full_weight": args.joint_full_weight,
        }
        save()
    gated.eval()
    if args.train_only:
        print(f"trained and saved in {args.out}; run again without --train-only to time the models", flush=True)
        return

    picks = _threshold_search(args, report, gated, dataset) if args.search_thresholds else []

    # One pass over the test images, the models taking turns: a shared host drifts by 10-20% over minutes, so models
    # timed one after the other would be compared across that drift.
    thresholds = sorted(set(args.thresholds))
    timing = report.get("timing", {})
    compare = {str(d): _compared_model(d) for d in args.compare}
    if (
        args.retime
        or timing.get("thresholds") != thresholds
        or timing.get("method") != TIMING_METHOD
        or timing.get("compare", []) != list(compare)
        or timing.get("searched", []) != [p["thresholds"] for p in picks]
    ):
        if timing:  # kept: a timing made on a busy host is still evidence of how far timings move
            earlier = {key: report[key] for key in _TIMED_KEYS if key in report}
            report.setdefault("earlier_timings", []).append(earlier)
        names = [name for name, _ in gated_blocks(gated)]
        for _, block in gated_blocks(gated):
            block.reset_counters()  # gate training leaves its val pass in the counters
        models: dict[str, torch.nn.Module] = {"static": model}
        if equal is not None:
            models["static_equal"] = equal
        for where, (other, _) in compare.items():
            models[f"compare:{where}"] = other
        for threshold in thresholds:
            models[f"t={threshold}"] = copied = copy.deepcopy(gated)
            set_thresholds(copied, dict.fromkeys(names, threshold))
        for number, point in enumerate(picks, 1):
            models[f"search:{number}"] = copied = copy.deepcopy(gated)
            set_thresholds(copied, point["thresholds"])
        print(f"timing {len(models)} models, taking turns, on {args.latency_images} test images, 1 thread", flush=True)
        with torch_threads(1):
            rows = time_models_per_image(models, dataset, "test", limit=args.latency_images)
            rates = {  # per gated model (one threshold, or searched per block)
                key: {name: block.execution_rate() for name, block in gated_blocks(gated_model)}
                for key, gated_model in models.items()
                if key.startswith(("t=", "search:"))
            }
            # The parts do not depend on the threshold (any above 0 makes every block skippable). Measuring resets
            # the counters, which is why the rates were read first.
            probe = next(iter(dataset.batches("test", 1)))[0]
            parts = measure_parts(models[f"t={thresholds[-1]}"], probe, reference=model)
        # The parts were timed on one input at another moment than the pass: carried over by the static model, which
        # both timings include (expected = measured static x expected / static, each ratio measured side by side).
        report["static"] = _static_row(rows["static"])
        scale = report["static"]["latency_ms_measured"] / parts.reference_ms  # type: ignore[operator]
        parts = parts.scaled(scale)
        if equal is not None:
            report["static_equal"] = {**_static_row(rows["static_equal"]), "extra_epochs": args.joint_epochs}
        report["compare"] = [
            {**_static_row(rows[f"compare:{where}"]), **described, "folder": where}
            for where, (_, described) in compare.items()
        ]
        static_ms = report["static"]["latency_ms_measured"]
        report["dynamic"] = [
            _gated_row({"threshold": t}, rows[f"t={t}"], rates[f"t={t}"], parts, static_ms) for t in thresholds
        ]
        for number, point in enumerate(picks, 1):
            searched = {
                "threshold": None,
                "label": f"per-block {number}",
                "thresholds": point["thresholds"],
                "val_top1": point["top1"],
                "val_expected_ms": point["expected_ms"],
            }
            key = f"search:{number}"
            report["dynamic"].append(_gated_row(searched, rows[key], rates[key], parts, static_ms))
        report["timing"] = {
            "timed": datetime.now().isoformat(timespec="seconds"),
            "method": TIMING_METHOD,
            "thresholds": thresholds,
            "interleaved": list(models),
            "compare": list(compare),
            "searched": [p["thresholds"] for p in picks],
            "parts_scale": scale,
            "static_part_ms": parts.static_ms,
            "all_blocks_ms": parts.all_ms,
            "block_ms": parts.block_ms,
        }
        save()
    table = _table(report)
    (args.out / "table.md").write_text(table)
    _plot(report, args.out / "latency_accuracy.png")
    _plot_exec_rates(report, args.out / "exec_rates.png")
    print(table)


def _gated_row(
    setting: dict[str, Any],
    rows: list[tuple[int, int, float]],
    rates: dict[str, float],
    parts: DynamicParts,
    static_ms: float,
) -> dict[str, Any]:
    """A gated setting's report row: the setting, then its profile from the pass; printed as it is made."""
    profile = profile_from_rows(rows, rates, parts)
    row = {**setting, **asdict(profile)}
    row["mean_exec_rate"] = sum(profile.exec_rate.values()) / len(profile.exec_rate)
    print(
        f"{'threshold ' if row.get('threshold') is not None else ''}{_setting(row)}: top-1 {profile.top1:.4f}, "
        f"{profile.latency_ms_measured:.3f} ms measured ({profile.latency_ms_measured / static_ms:.3f} of static), "
        f"{profile.latency_ms_expected:.3f} ms expected",
        flush=True,
    )
    return row


def _threshold_search(
    args: argparse.Namespace, report: dict[str, Any], gated: torch.nn.Module, dataset: Any
) -> list[dict[str, Any]]:
    """The per-block settings to time: a greedy search on val (saved in ``threshold_search.json`` with its settings
    and reused while they match), then ``--search-thresholds`` of its points (:func:`pick_searched`).

    The search prices a setting with the measured parts of the gated model: those of the report's last timing when
    it has one, else parts measured now (one thread).
    """
    if args.search_device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--search-device cuda needs a CUDA GPU; none is available here")
    path = args.out / "threshold_search.json"
    settings = {"levels": sorted(args.search_levels), "images": args.search_images, "stop": args.search_stop}
    saved = json.loads(path.read_text()) if path.exists() else None
    if saved is None or saved.get("settings") != settings:
        names = [name for name, _ in gated_blocks(gated)]
        timing = report.get("timing", {})
        searched = copy.deepcopy(gated)  # measured (when needed) and searched; the report's model is left as it is
        if set(names) <= set(timing.get("block_ms", {})):
            parts = DynamicParts(timing["static_part_ms"], timing["block_ms"], timing["all_blocks_ms"])
        else:
            set_thresholds(searched, dict.fromkeys(names, 0.5))  # every block skippable: each one's part is timed
            with torch_threads(1):
                parts = measure_parts(searched, next(iter(dataset.batches("test", 1)))[0])
        stop = parts.static_ms + args.search_stop * sum(parts.block_ms[name] for name in names)
        steps = search_thresholds(
            searched.to(args.search_device),
            dataset,
            parts,
            levels=tuple(settings["levels"]),
            limit=args.search_images,
            stop_ms=stop,
        )
        saved = {"settings": settings, "parts": asdict(parts), "path": [asdict(step) for step in steps]}
        atomic_write_bytes(path, lambda tmp: tmp.write_text(json.dumps(saved, indent=1)))
    return pick_searched(saved["path"], args.search_thresholds)


if __name__ == "__main__":
    main()
