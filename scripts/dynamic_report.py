"""Static pruning alone against static pruning plus dynamic block skipping, image by image at batch 1.

The same as ``prunegym dynamic``: it parses the arguments and calls :func:`agents.dynamic.run_dynamic_report`, whose
module says what is trained, timed and reported. One static plan (``--plan PLAN.json``, or ``--uniform RATIO``; 0
keeps the dense model) is pruned and fine-tuned, skip gates are trained on it (``--gate-epochs``, then optionally
``--joint-epochs`` with the backbone), and every model is timed image by image on the test split in one pass, taking
turns: the static model(s) and the gated model at each of ``--thresholds`` (``--search-thresholds K``: also K
per-block settings found greedily on val). ``--retime`` times the models again, ``--static-only`` then ``--compare
DIR...`` times static pruning at other ratios in the same pass, ``--train-only`` stops before timing. Re-running
resumes.

Usage:
    python -m scripts.dynamic_report --model resnet56 --checkpoint C --data cifar10 --uniform 0.3 \\
        --finetune-epochs 2 --joint-epochs 2 --thresholds 0.3 0.5 0.7 --out runs/dynamic_resnet56
"""

from __future__ import annotations

import argparse

from agents.dynamic_tables import pick_searched
from pruning_core.errors import PruneGymError
from scripts.cli import add_dynamic_args, dynamic_config_from_args, report_dynamic

__all__ = ["main", "pick_searched"]


def main(argv: list[str] | None = None) -> None:
    """Parse ``argv`` and run the report; bad input exits with its message (as ``prunegym dynamic`` does, with
    status 2 for bad arguments)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_dynamic_args(parser)
    args = parser.parse_args(argv)
    try:
        config = dynamic_config_from_args(args)
    except PruneGymError as exc:
        parser.error(str(exc))
    try:
        report_dynamic(config, args.threads)
    except PruneGymError as exc:
        raise SystemExit(str(exc)) from None


if __name__ == "__main__":
    main()
