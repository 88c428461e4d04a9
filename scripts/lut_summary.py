"""One Markdown table of the lookup-table checks in a folder (``scripts/lut_check.sh``): per table its build time,
its figures against absolute and relative latency, the MACs proxy's and the host's own noise, and any other builds
scored on the same measurements.

Usage: python -m scripts.lut_summary OUT   (reads OUT/*.validate.json and OUT/*.build.log)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HEADER = (
    "| table | build wall s | MAPE | within 10% | Spearman | relative: MAPE / within / Spearman "
    "| MACs relative: within / Spearman | host noise (halves Spearman) |\n|---|---|---|---|---|---|---|---|"
)


def _relative(figures: dict[str, float]) -> str:
    return f"{figures['mape']:.1%} / {figures['within_10pct']:.0%} / {figures['spearman']:.3f}"


def summary(folder: Path) -> str:
    """The table for every ``*.validate.json`` in ``folder`` (``lut validate --json`` output beside its table's
    ``*.build.log``, whose last line is ``build wall S s``).

    >>> summary(Path("/nonexistent")).count("\\n")
    1
    """
    lines = [HEADER]
    for path in sorted(folder.glob("*.validate.json")):
        name = path.name.removesuffix(".validate.json")
        record = json.loads(path.read_text())
        build = (folder / f"{name}.build.log").read_text().strip().splitlines()[-1].split()[-2]
        rel, noise = record["relative"], record["repeatability"].get("halves_spearman", float("nan"))
        lines.append(
            f"| {name} | {build} | {record['mape']:.1%} | {record['within_10pct']:.0%} | {record['spearman']:.3f} | "
            f"{_relative(rel)} | {rel['macs_within_10pct']:.0%} / {rel['macs_spearman']:.3f} | {noise:.3f} |"
        )
        for other, figures in record.get("others", {}).items():
            lines.append(f"| {Path(other).stem} (same measurements) | | | | | {_relative(figures)} | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    print(summary(parser.parse_args(argv).folder))


if __name__ == "__main__":
    main()
