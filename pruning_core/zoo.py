"""Any model a user brings is pruned or refused in one line: the zoo check and its table.

For one model (random weights are enough to test the surgery): find its groups, prune it at each sparsity, run it,
save it to a pruned-model folder and reload it (same outputs), export the reload to ONNX (same outputs). A model
the engine cannot handle is refused by a :class:`~pruning_core.errors.PruneGymError`, one line.

``python -m pruning_core.zoo --out benchmarks/zoo_torchvision.md`` writes the table for every torchvision
classifier, ``python -m pruning_core.zoo --timm --out benchmarks/zoo_timm.md`` the one for :data:`TIMM_MODELS`.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pruning_core.engine import PruningEngine
from pruning_core.errors import PruneGymError
from pruning_core.models import TORCHVISION_PREFIX, build_model, built_for_one_size, model_slug
from pruning_core.plan import PruningPlan
from pruning_core.serialize import load_pruned, save_pruned

# Square input sides tried, smallest first: a model is checked at the first one its dense forward accepts.
INPUT_SIDES = (28, 32, 56, 64, 75, 96, 128, 224)
SPARSITIES = (0.3, 0.6)
TIMM_MODELS = (
    "timm:resnet26d",  # residual bottlenecks, deep stem, average-pool shortcuts
    "timm:resnext26ts",  # grouped convolutions
    "timm:seresnext26d_32x4d",  # grouped convolutions and squeeze-excitation
    "timm:ecaresnet26t",  # efficient channel attention (a 1-D convolution across the channels)
    "timm:regnetx_002",  # grouped convolutions
    "timm:regnety_002",  # grouped convolutions and squeeze-excitation
    "timm:efficientnet_b0",  # depthwise convolutions and squeeze-excitation
    "timm:mobilenetv3_small_100",  # depthwise, squeeze-excitation, hard-swish
    "timm:mobilenetv3_large_100",
    "timm:lcnet_050",  # depthwise, squeeze-excitation
    "timm:ghostnet_100",  # ghost modules: cheap depthwise features concatenated, then sliced
    "timm:mixnet_s",  # mixed depthwise kernels over channel splits
    "timm:convnext_atto",  # depthwise 7x7, LayerNorm, layer scale
    "timm:dla34",  # deep layer aggregation (concatenating trees)
    "timm:rexnet_100",  # in-place additions into a slice of wider channels
    "timm:mobilevit_xxs",  # hybrid: convolutions and transformer blocks over unfolded patches
    "timm:edgenext_xx_small",  # hybrid: convolutions and transposed (channel) attention
)
"""A representative set of timm models, the smallest variant of each family: convolutional families with
grouped, depthwise and squeeze-excitation layers, and two hybrids with attention."""


@dataclass
class ZooResult:
    """What the zoo check found for one model.

    Attributes:
        model: Model name as :func:`~pruning_core.models.build_model` takes it.
        input_side: Side of the square input it was checked at.
        groups: Prunable channel groups found (0 when refused before).
        left_dense: Layers left dense, each ``name: reason``.
        refused: The one-line refusal, or None when it was pruned.
        macs_kept: MACs after pruning over dense MACs, per sparsity.
        reload_diff: Largest output difference between a pruned model and its reload from the folder.
        onnx: ``ok (max diff ...)``, ``skipped: ...`` (onnx not installed) or the export's error.
        onnx_ok: Whether every export ran and matched PyTorch.
        seconds: Time the check took.
    """

    model: str
    input_side: int
    groups: int = 0
    left_dense: list[str] = field(default_factory=list)
    refused: str | None = None
    macs_kept: dict[float, float] = field(default_factory=dict)
    reload_diff: float = 0.0
    onnx: str = ""
    onnx_ok: bool = False
    seconds: float = 0.0


def versions() -> str:
    """Versions of the libraries the models come from (timm where installed).

    >>> versions().startswith("torch ")
    True
    """
    import torchvision

    found = [f"torch {torch.__version__}", f"torchvision {torchvision.__version__}"]
    if importlib.util.find_spec("timm") is not None:
        import timm

        found.append(f"timm {timm.__version__}")
    return ", ".join(found)


def torchvision_classifiers() -> list[str]:
    """Every torchvision classification model, as ``tv:<name>``."""
    import torchvision

    return [f"{TORCHVISION_PREFIX}{n}" for n in torchvision.models.list_models(module=torchvision.models)]


def smallest_input_side(name: str, sides: Sequence[int] = INPUT_SIDES) -> int:
    """The first of ``sides`` at which the dense model (random weights, 10 classes) runs; the last one otherwise."""
    model = None if built_for_one_size(name) else build_model(name, num_classes=10).eval()
    for side in sides:
        try:
            candidate = model if model is not None else build_model(name, num_classes=10, image_size=side).eval()
            with torch.no_grad():
                candidate(torch.zeros(1, 3, side, side))
            return side
        except Exception:  # too small for this model (its stride, its windows or its patches): try the next side
            continue
        finally:
            gc.collect()
    return sides[-1]


def check_model(
    name: str,
    folder: str | Path,
    *,
    input_side: int | None = None,
    sparsities: Iterable[float] = SPARSITIES,
    onnx: bool = True,
    seed: int = 0,
) -> ZooResult:
    """Prune ``name`` at each sparsity, run it, reload it from a pruned-model folder and export it to ONNX.

    Args:
        name: A model name for :func:`~pruning_core.models.build_model`.
        folder: Where the pruned-model folders and ONNX files go.
        input_side: Side of the square input; the smallest the model accepts when None.
        sparsities: Uniform sparsities applied to every group.
        onnx: Whether to export (skipped with a note when the ``onnx`` package is missing).
        seed: Seed of the weights and inputs.

    Returns:
        The result; a model the engine refuses has ``refused`` set (one line) and no other figures.
        Errors that are not :class:`~pruning_core.errors.PruneGymError` are bugs and propagate.
    """
    start = time.perf_counter()
    try:  # an unknown name, or a timm model without timm, is refused here
        side = input_side or smallest_input_side(name)
    except PruneGymError as exc:
        return ZooResult(model=name, input_side=0, refused=str(exc), seconds=time.perf_counter() - start)
    result = ZooResult(model=name, input_side=side)
    shape = (3, side, side)
    inputs = torch.randn(2, *shape, generator=torch.Generator().manual_seed(seed))
    try:
        torch.manual_seed(seed)
        engine = PruningEngine(build_model(name, num_classes=10, image_size=side), shape)
    except PruneGymError as exc:
        result.refused = str(exc)
        result.seconds = time.perf_counter() - start
        return result
    result.groups = len(engine.groups)
    result.left_dense = [f"{u.name}: {u.reason}" for u in engine.unprunable]
    has_onnx = importlib.util.find_spec("onnx") is not None
    onnx_notes = []
    result.onnx_ok = onnx and has_onnx
    folder = Path(folder)
    for sparsity in sparsities:
        try:
            pruned = engine.apply(PruningPlan.uniform(engine.group_names, sparsity))
        except PruneGymError as exc:
            result.refused = str(exc)
            break
        with torch.no_grad():
            out = pruned.model(inputs)
        if out.shape != (2, 10) or not torch.isfinite(out).all():
            raise AssertionError(f"{name} at sparsity {sparsity}: expected finite (2, 10) outputs; got {out.shape}")
        result.macs_kept[sparsity] = pruned.macs_ratio
        target = folder / f"{model_slug(name)}_{sparsity}"
        save_pruned(target, pruned, base_model=name, classes=[str(i) for i in range(10)])
        del pruned  # one pruned copy in memory at a time: the largest models fill this machine
        gc.collect()
        loaded = load_pruned(target).model
        with torch.no_grad():
            result.reload_diff = max(result.reload_diff, float((loaded(inputs) - out).abs().max()))
        if onnx and has_onnx:
            from pruning_core.export import export_onnx

            report = export_onnx(loaded, shape, target / "model.onnx")
            scale = max(1.0, float(out.abs().max()))
            result.onnx_ok = result.onnx_ok and report.max_abs_diff <= 1e-3 * scale
            onnx_notes.append(f"{report.max_abs_diff:.1e}")
        del loaded
        shutil.rmtree(target, ignore_errors=True)
        gc.collect()
    if not onnx:
        result.onnx = "not run"
    elif not has_onnx:
        result.onnx = "skipped: onnx not installed"
    elif onnx_notes:
        result.onnx = f"{'ok' if result.onnx_ok else 'MISMATCH'} (max diff {', '.join(onnx_notes)})"
    result.seconds = time.perf_counter() - start
    return result


def _cell(text: str, limit: int = 160) -> str:
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def zoo_table(results: Iterable[ZooResult], sparsities: Sequence[float] = SPARSITIES) -> str:
    """The results as a markdown table: groups found, pruned or refused and why, MACs kept, reload difference, ONNX.

    >>> print(zoo_table([ZooResult("tv:x", 32, groups=3, macs_kept={0.3: 0.5}, onnx="ok")], [0.3]).splitlines()[2])
    | tv:x | 32 | 3 | pruned | 0.50 | 0.0e+00 | ok | 0 |
    """
    kept = " / ".join(f"{s:g}" for s in sparsities)
    lines = [
        f"| model | input | groups | pruned or refused, and why | MACs kept at {kept} | max diff after reload "
        "| ONNX | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.refused is not None:
            status, macs, diff = f"refused: {_cell(r.refused)}", "-", "-"
        else:
            status = "pruned"
            if r.left_dense:
                status += f"; {len(r.left_dense)} layer(s) left dense, e.g. {_cell(r.left_dense[0], 140)}"
            macs = " / ".join(f"{r.macs_kept[s]:.2f}" if s in r.macs_kept else "-" for s in sparsities)
            diff = f"{r.reload_diff:.1e}"
        onnx = _cell(r.onnx, 80) if r.refused is None else "-"
        lines.append(
            f"| {r.model} | {r.input_side} | {r.groups} | {status} | {macs} | {diff} | {onnx} | {r.seconds:.0f} |"
        )
    return "\n".join(lines) + "\n"


def update_rows(existing: str, table: str) -> str:
    """``existing`` markdown with the rows of ``table``'s models replaced (and new models appended to its table).

    >>> old = "# t\\n| model | x |\\n|---|---|\\n| a | 1 |\\n| b | 2 |\\n"
    >>> print(update_rows(old, "| model | x |\\n|---|---|\\n| b | 3 |\\n| c | 4 |\\n"), end="")
    # t
    | model | x |
    |---|---|
    | a | 1 |
    | b | 3 |
    | c | 4 |
    """
    new = {line.split("|")[1].strip(): line for line in table.splitlines()[2:]}
    lines = []
    for line in existing.splitlines():
        model = line.split("|")[1].strip() if line.startswith("| ") else None
        lines.append(new.pop(model) if model in new else line)
    last_row = max((i for i, line in enumerate(lines) if line.startswith("|")), default=len(lines) - 1)
    lines[last_row + 1 : last_row + 1] = list(new.values())
    return "\n".join(lines) + "\n"


def record(path: str | Path, result: ZooResult) -> None:
    """Put ``result``'s row in the markdown table at ``path`` (created with its header when missing), replacing the
    model's earlier row: a run cut short keeps the rows it made."""
    path = Path(path)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            "# Zoo check: prune at 0.3 and 0.6 uniform sparsity, run, reload, export\n\n"
            "Random weights, 10 classes, the smallest square input each model runs at (found by trying "
            f"{', '.join(map(str, INPUT_SIDES))}), {versions()}. Written by `pruning_core.zoo.record`, from "
            "`python -m pruning_core.zoo --out <file> [--timm | models]` or the slow tests "
            "`PRUNEGYM_ZOO_TABLE=<file> pytest -m slow tests/pruning_core/test_zoo.py` (`test_zoo_timm.py` for timm)."
            "\n\n" + zoo_table([])
        )
    path.write_text(update_rows(path.read_text(), zoo_table([result])))


def main(argv: Sequence[str] | None = None) -> None:
    """Check models (every torchvision classifier by default) and write the markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("models", nargs="*", help="model names (default: every torchvision classifier)")
    parser.add_argument("--timm", action="store_true", help="the timm models of TIMM_MODELS (timm must be installed)")
    parser.add_argument("--out", type=Path, required=True, help="markdown file to write")
    parser.add_argument(
        "--update", action="store_true", help="replace only the given models' rows of an existing --out table"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if not args.update:
        args.out.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models or (list(TIMM_MODELS) if args.timm else torchvision_classifiers()):
            try:
                result = check_model(name, Path(tmp) / "zoo")
            except Exception as exc:  # a bug: keep going, and say so in the table
                result = ZooResult(model=name, input_side=0, refused=f"BUG {type(exc).__name__}: {exc}")
            print(f"{name}: {result.refused or 'pruned'} {result.onnx} {result.seconds:.0f}s", flush=True)
            record(args.out, result)
            gc.collect()


if __name__ == "__main__":
    main()
