"""The dynamic-skip report's tables and plots, written from its ``report.json`` alone (:mod:`agents.dynamic`).

``table.md`` sets the static model(s) against the gated settings (one threshold for every block, or per-block
thresholds found by search), then each gated setting against static pruning alone at the same accuracy, accuracy and
latency by the number of blocks an image used, and every timing of the same models. ``latency_accuracy.png`` plots
accuracy against measured and expected latency, ``exec_rates.png`` each block's execution rate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_dynamic_tables(report: dict[str, Any], out: Path) -> str:
    """Write ``table.md``, ``latency_accuracy.png`` and ``exec_rates.png`` of a timed report into ``out``.

    Args:
        report: A report (``report.json``) whose models were timed.
        out: The report's folder.

    Returns:
        The table written to ``table.md`` (Markdown).
    """
    table = report_table(report)
    (out / "table.md").write_text(table)
    plot_latency_accuracy(report, out / "latency_accuracy.png")
    plot_exec_rates(report, out / "exec_rates.png")
    return table


def setting_label(row: dict[str, Any]) -> str:
    """How a gated row is named: its one threshold, or the label of per-block thresholds found by search.

    >>> setting_label({"threshold": 0.5}), setting_label({"threshold": None, "label": "per-block 2"})
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
        head = f"| {setting_label(row)} | {accuracy:.4f} | {latency:.3f} |"
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


def report_table(report: dict[str, Any]) -> str:
    """The report as Markdown: every model timed, the fastest gated setting as accurate as static pruning alone, and
    the tables below it (see the module's docstring)."""
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
            f"| static + dynamic | {setting_label(row)} | {row['top1']:.4f} | {row['latency_ms_measured']:.3f} | "
            f"{row['latency_ms_expected']:.3f} | {row['mean_exec_rate']:.3f} | {change:+.1%} |"
        )
    reference = max(static["top1"], report.get("static_equal", {}).get("top1", 0.0))  # the harder bar
    close = [r for r in report["dynamic"] if r["top1"] >= reference - 0.005]
    if close:
        best = min(close, key=lambda r: r["latency_ms_measured"])
        lines += [
            "",
            f"Fastest setting within 0.5 points of the better static-only accuracy ({reference:.4f}): "
            f"threshold {setting_label(best)}, measured mean latency "
            f"{best['latency_ms_measured'] / static['latency_ms_measured'] - 1:+.1%} against static only; "
            f"measured/expected {best['latency_ms_measured'] / best['latency_ms_expected']:.3f}.",
        ]
    elif report["dynamic"]:
        best = max(report["dynamic"], key=lambda r: (r["top1"], -r["latency_ms_measured"]))
        lines += [
            "",
            f"No setting is within 0.5 points of the better static-only accuracy ({reference:.4f}). The most accurate: "
            f"threshold {setting_label(best)}, {best['top1'] - reference:+.4f}, measured mean latency "
            f"{best['latency_ms_measured'] / static['latency_ms_measured'] - 1:+.1%} against static only; "
            f"measured/expected {best['latency_ms_measured'] / best['latency_ms_expected']:.3f}.",
        ]
    if report.get("compare") and report["dynamic"]:
        lines += ["", "At equal accuracy (timed in the same pass):", "", *_iso_accuracy_lines(report)]
    if report["dynamic"]:
        lines += ["", f"By number of gated blocks an image executed (threshold {setting_label(best)}, test):", ""]
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
    settings = list(dict.fromkeys(setting_label(r) for p in passes for r in p.get("dynamic", [])))
    lines = [
        "| pass | timed | method | static ms | "
        + " | ".join(f"{t}: vs static, measured/expected" for t in settings)
        + " |",
        "|---|---|---|---|" + "---|" * len(settings),
    ]
    for number, timed in enumerate(passes, 1):
        static = timed["static"]["latency_ms_measured"]
        rows = {setting_label(r): r for r in timed.get("dynamic", [])}
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


def plot_exec_rates(report: dict[str, Any], path: Path) -> None:
    """Execution rate of each gated block on the test split, one line per threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for row in report["dynamic"]:
        names = list(row["exec_rate"])
        ax.plot(range(len(names)), [row["exec_rate"][n] for n in names], "o-", ms=3, label=setting_label(row))
    if report["dynamic"]:
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
        ax.legend(fontsize=7)
    ax.set_ylabel("fraction of test images executing the block")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"{report['model']}: per-block execution rate")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_latency_accuracy(report: dict[str, Any], path: Path) -> None:
    """Test accuracy against measured (and expected) mean latency of every model timed."""
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
            ax.annotate(setting_label(r), (r["latency_ms_measured"], r["top1"]), fontsize=7)
    ax.set_xlabel("mean batch-1 latency per test image (ms, 1 thread)")
    ax.set_ylabel("test top-1")
    ax.set_title(f"{report['model']}: dynamic skipping on top of static pruning")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
