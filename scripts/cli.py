"""The ``prunegym`` command line. It parses arguments and calls library code, nothing more."""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from envs.layer_prune import DEFAULT_LEVELS
from hardware_models.lut import DEFAULT_CALIBRATION_VARIANTS, DEFAULT_GRANULE
from hardware_models.measure import MEASURED_DEVICES
from pruning_core.data import ImageDataset
from pruning_core.models import default_input_shape, is_user_code, user_model_spec
from pruning_core.scoring import DEFAULT_FINETUNE_STEPS
from scripts.record_table import print_records

if TYPE_CHECKING:
    from agents.dynamic import DynamicReportConfig
    from envs.layer_prune import LayerPruneEnv
    from envs.target import Target
    from pruning_core.checkpoint import Checkpoint
    from pruning_core.executor import LocalExecutor, RayExecutor
from pruning_core.errors import PruneGymError

Handler = Callable[[argparse.Namespace], int]

MODEL_PY_HELP = (
    "your own model instead of --model: FILE.py:FUNCTION, a function that returns a torch.nn.Module (called with "
    "num_classes, in_channels and image_size where its signature takes them). THIS RUNS THE CODE IN FILE.py. "
    "Checkpoints and pruned folders record the file's absolute path; loading them again needs --model-py"
)
INPUT_SIZE_HELP = "C,H,W the model takes, checked against the data (imagefolder images are resized to it)"


def _add_model_args(parser: argparse.ArgumentParser, *, model_default: str | None, required: bool, help: str) -> None:
    """``--model`` or ``--model-py`` (one of them), and ``--input-size``."""
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--model", default=model_default, help=help)
    group.add_argument("--model-py", default=None, metavar="FILE.py:FUNCTION", help=MODEL_PY_HELP)
    parser.add_argument("--input-size", default=None, metavar="C,H,W", help=INPUT_SIZE_HELP)


def _parse_size(text: str, flag: str) -> tuple[int, int, int]:
    try:
        size = tuple(int(x) for x in text.split(","))
    except ValueError:
        size = ()
    if len(size) != 3 or min(size) < 1:
        raise PruneGymError(f"{flag} must be C,H,W (e.g. 3,32,32); got {text!r}")
    return size  # type: ignore[return-value]


def resolve_model_args(args: argparse.Namespace) -> None:
    """Put the model that ``--model-py`` names in ``args.model`` (``py:<absolute path>:<function>``) and parse
    ``--input-size``, in place; idempotent."""
    if getattr(args, "model_py", None) is not None:
        args.model = user_model_spec(args.model_py)
    if isinstance(getattr(args, "input_size", None), str):
        args.input_size = _parse_size(args.input_size, "--input-size")


def _named_code(args: argparse.Namespace) -> str | bool:
    """The user's model file the command line names (it may run), or False."""
    model = getattr(args, "model", None)
    return model if model is not None and is_user_code(model) else False


def _add_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        default="digits",
        choices=["digits", "cifar10", "imagefolder"],
        help="dataset (default: digits, embedded in scikit-learn)",
    )
    parser.add_argument(
        "--data-root",
        default=None,
        help="ImageFolder root with train/ and test/ (cifar10 defaults to $PRUNEGYM_CIFAR10)",
    )
    parser.add_argument("--image-size", type=int, default=None, help="resize imagefolder images to this size")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def _load_data(args: argparse.Namespace, progress: bool = True):
    from pruning_core.data import load_dataset

    kwargs: dict[str, object] = {"progress": progress, "input_size": getattr(args, "input_size", None)}
    if args.data == "imagefolder" and args.image_size is not None:
        kwargs["image_size"] = args.image_size
    return load_dataset(args.data, args.data_root, **kwargs)


def _set_threads(args: argparse.Namespace) -> None:
    if args.threads is not None:
        if args.threads < 1:
            raise PruneGymError(f"--threads must be >= 1; got {args.threads}")
        torch.set_num_threads(args.threads)


def cmd_pretrain(args: argparse.Namespace) -> int:
    from pruning_core.models import build_model
    from pruning_core.training import TrainConfig, pretrain

    _set_threads(args)
    torch.manual_seed(args.seed)
    dataset = _load_data(args)
    config = TrainConfig(
        epochs=args.epochs,
        lr=args.lr,
        weight_decay=args.weight_decay,
        batch_size=args.batch_size,
        warmup_epochs=args.warmup_epochs,
        label_smoothing=args.label_smoothing,
        cutout=args.cutout,
        seed=args.seed,
        bf16=args.bf16,
        channels_last=args.channels_last,
        distill_weight=args.distill_weight if args.distill_from is not None else 0.0,
        distill_temperature=args.distill_temperature,
    )
    channels, height, width = dataset.input_shape
    size = height if height == width else None
    model = build_model(args.model, num_classes=dataset.num_classes, in_channels=channels, image_size=size)
    extra_meta: dict[str, object] = {}
    if args.init_from is not None:  # a resumed run overwrites these weights but keeps the record
        extra_meta["init_from"] = _init_from(model, args.model, args.init_from, dataset.classes, _named_code(args))
    teacher = None
    if args.distill_from is not None:
        source, extra_meta["distilled_from"] = _trained_source(args.distill_from, dataset.classes, "--distill-from")
        teacher = source.build(run_code=_named_code(args))
    command = "prunegym " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("prunegym") else None
    _, meta = pretrain(
        model,
        args.model,
        dataset,
        config,
        args.out,
        resume=args.resume,
        teacher=teacher,
        extra_meta={**extra_meta, **({"command": command} if command else {})},
    )
    print(
        f"{args.model} on {dataset.name}: test top-1 {meta['test_top1']:.4f} on {meta['test_n']} images; "
        f"saved {args.out}"
    )
    return 0


def _trained_source(path: Path, classes: Sequence[str], flag: str) -> tuple[Checkpoint, dict[str, object]]:
    """A checkpoint another run starts from or learns from, checked against the classes, and its record."""
    from pruning_core.checkpoint import load_checkpoint, sha256

    source = load_checkpoint(path)
    if list(source.meta["classes"]) != list(classes):
        raise PruneGymError(f"{flag} {path} was trained on classes {source.meta['classes']}; got {list(classes)}")
    record = {
        "checkpoint": str(path),
        "model": str(source.meta["model"]),
        "sha256": sha256(path),
        "test_top1": source.meta.get("test_top1"),
    }
    return source, record


def _init_from(
    model: torch.nn.Module, name: str, path: Path, classes: Sequence[str], run_code: str | bool
) -> dict[str, object]:
    """Start ``model`` from a trained checkpoint: the same model's weights, or a shallower CIFAR ResNet's."""
    from pruning_core.models import CifarResNet, deepen_cifar_resnet

    source, record = _trained_source(path, classes, "--init-from")
    trained = source.build(run_code=run_code)
    if record["model"] == name:
        model.load_state_dict(trained.state_dict())
    elif (
        isinstance(model, CifarResNet) and isinstance(trained, CifarResNet) and len(trained.layer1) < len(model.layer1)
    ):
        deepen_cifar_resnet(trained, model)
    else:
        raise PruneGymError(
            f"--init-from expected a {name} checkpoint or a shallower CIFAR ResNet; got {record['model']}"
        )
    return record


def _load_model_for_eval(args: argparse.Namespace) -> tuple[torch.nn.Module, str, list[str]]:
    """The model named by --checkpoint or --pruned, its name, and the classes it was trained on."""
    if (args.checkpoint is None) == (args.pruned is None):
        raise PruneGymError("expected exactly one of --checkpoint or --pruned")
    if args.pruned is not None:
        from pruning_core.serialize import load_pruned

        loaded = load_pruned(args.pruned, run_code=_named_code(args))
        return loaded.model, f"{loaded.structure['base_model']} (pruned)", loaded.classes
    from pruning_core.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(args.checkpoint)
    if args.model is not None and args.model != checkpoint.meta["model"]:
        raise PruneGymError(f"--model is {args.model} but {args.checkpoint} holds {checkpoint.meta['model']}")
    return checkpoint.build(run_code=_named_code(args)), checkpoint.meta["model"], list(checkpoint.meta["classes"])


def _check_classes(dataset: ImageDataset, classes: list[str], source: object) -> None:
    if list(dataset.classes) != list(classes):
        raise PruneGymError(
            f"{source} was trained on classes {list(classes)[:5]}...; the dataset has {list(dataset.classes)[:5]}..."
        )


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pruning_core.metrics import count_cost
    from pruning_core.training import evaluate

    _set_threads(args)
    model, name, classes = _load_model_for_eval(args)
    dataset = _load_data(args, progress=not args.json)
    _check_classes(dataset, classes, args.checkpoint or args.pruned)
    result = evaluate(model, dataset, args.split)
    cost = count_cost(model, dataset.input_shape)
    dynamic = _dynamic_record(model, dataset, args)
    record = {
        "top1": result.top1,
        "top5": result.top5,
        "n": result.n,
        "macs": cost.macs,
        "params": cost.params,
        "model": name,
        "split": args.split,
        "dataset": dataset.name,
        **dynamic,
    }
    if args.json:
        print(json.dumps(record))
    else:
        top5 = f"  top-5 {result.top5:.4f}" if result.top5 is not None else ""
        print(
            f"{name} on {dataset.name}/{args.split}: top-1 {result.top1:.4f}{top5}  n={result.n}  "
            f"MACs {cost.macs / 1e6:.2f}M  params {cost.params / 1e3:.1f}K"
        )
    return 0


def _dynamic_record(model: torch.nn.Module, dataset: ImageDataset, args: argparse.Namespace) -> dict[str, object]:
    """For a model with skip gates: batch-1 latency with real skipping, expected latency and execution rates."""
    from hardware_models.dynamic import profile_dynamic
    from pruning_core.dynamic import gated_blocks

    if not any(True for _ in gated_blocks(model)):
        return {}
    with torch.no_grad():
        profile = profile_dynamic(model, dataset, args.split, limit=args.latency_images)
    return {
        "latency_ms_measured": profile.latency_ms_measured,
        "latency_ms_expected": profile.latency_ms_expected,
        "exec_rate": profile.exec_rate,
        "top1_timed_images": profile.top1,
        "by_blocks_used": profile.by_blocks_used,
    }


def cmd_prune(args: argparse.Namespace) -> int:
    from pruning_core.checkpoint import load_checkpoint
    from pruning_core.engine import PruningEngine, describe
    from pruning_core.finetune import finetune_recipe, prune_and_finetune
    from pruning_core.plan import PruningPlan
    from pruning_core.serialize import save_pruned
    from pruning_core.training import resume_path

    _set_threads(args)
    checkpoint = load_checkpoint(args.checkpoint)
    if args.model is not None and args.model != checkpoint.meta["model"]:
        raise PruneGymError(f"--model is {args.model} but {args.checkpoint} holds {checkpoint.meta['model']}")
    dataset = _load_data(args)
    _check_classes(dataset, checkpoint.meta["classes"], args.checkpoint)
    engine = PruningEngine(checkpoint.build(run_code=_named_code(args)), dataset.input_shape, dataset=dataset)
    options = {
        "criterion": args.criterion,
        "granularity": args.granularity,
        "round_to": args.round_to,
        "nm": _parse_nm(args.nm),
    }
    if (args.plan is None) == (args.uniform is None):
        raise PruneGymError("expected exactly one of --plan PLAN.json or --uniform RATIO")
    plan = (
        PruningPlan.load(args.plan) if args.plan else PruningPlan.uniform(engine.group_names, args.uniform, **options)
    )
    # the recipe every method shares (bfloat16 where the CPU runs it natively, which halves an epoch there)
    config = finetune_recipe(
        args.finetune_epochs, lr=args.lr, schedule=args.schedule, seed=args.seed, distill_weight=args.distill
    )
    # the fine-tuning's state after every epoch: `prunegym prune` run again after a stop goes on from the last one
    resume = resume_path(args.out)
    pruned = prune_and_finetune(
        engine, plan, dataset, bn_batches=args.bn_batches, config=config, distill=args.distill > 0, resume=resume
    )
    save_pruned(
        args.out,
        pruned,
        base_model=checkpoint.meta["model"],
        classes=list(dataset.classes),
        extra_meta={
            "checkpoint": str(args.checkpoint),
            "dataset": dataset.name,
            "groups": describe(pruned, engine.graph),
        },
    )
    resume.unlink(missing_ok=True)  # the model is saved: nothing left to resume
    acc = "  ".join(f"{k} {v:.4f}" for k, v in pruned.accuracy.items())
    print(
        f"{checkpoint.meta['model']}: MACs {pruned.base_cost.macs / 1e6:.2f}M -> {pruned.cost.macs / 1e6:.2f}M "
        f"({pruned.macs_ratio:.1%}), params {pruned.base_cost.params / 1e3:.1f}K -> {pruned.cost.params / 1e3:.1f}K "
        f"({pruned.params_ratio:.1%}), zero weights {pruned.weight_sparsity:.1%}\n{acc}\nsaved {args.out}"
    )
    return 0


def _parse_nm(text: str) -> tuple[int, int]:
    parts = text.split(":")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise PruneGymError(f"--nm must look like N:M (e.g. 2:4); got {text!r}")
    return int(parts[0]), int(parts[1])


def cmd_export(args: argparse.Namespace) -> int:
    from pruning_core.export import export_onnx, onnx_top1, quantize_int8
    from pruning_core.serialize import load_pruned
    from pruning_core.training import evaluate

    _set_threads(args)
    loaded = load_pruned(args.pruned, run_code=_named_code(args))
    report = export_onnx(loaded.model, loaded.input_shape, args.out)
    record: dict[str, object] = {
        "onnx": str(report.path),
        "onnx_bytes": report.bytes,
        "max_abs_diff_ort_vs_torch": report.max_abs_diff,
    }
    if args.int8:
        dataset = _load_data(args, progress=False)
        _check_classes(dataset, loaded.classes, args.pruned)
        int8 = quantize_int8(report.path, Path(args.out).with_suffix(".int8.onnx"), dataset)
        record.update(
            {
                "int8": str(int8),
                "int8_bytes": int8.stat().st_size,
                "int8_size_ratio": int8.stat().st_size / report.bytes,
                "test_top1_torch": evaluate(loaded.model, dataset, "test").top1,
                "test_top1_onnx_fp32": onnx_top1(report.path, dataset),
                "test_top1_onnx_int8": onnx_top1(int8, dataset),
            }
        )
    print(json.dumps(record, indent=None if args.json else 2))
    return 0


def _input_shape(args: argparse.Namespace) -> tuple[int, ...]:
    if args.input_shape is not None:
        return _parse_size(args.input_shape, "--input-shape")
    return default_input_shape(args.model)


def _graph_for(args: argparse.Namespace):
    from pruning_core.graph import ModelGraph
    from pruning_core.models import build_model

    shape = _input_shape(args)
    torch.manual_seed(0)
    size = shape[1] if shape[1] == shape[2] else None
    return ModelGraph(build_model(args.model, in_channels=shape[0], image_size=size), shape)


def cmd_devices(args: argparse.Namespace) -> int:
    from hardware_models.registry import list_devices

    rows = [{"device": e.name, "kind": e.kind.value, "description": e.description} for e in list_devices()]
    rows.append({"device": "lut:PATH", "kind": "lookup table", "description": "a table built by `prunegym lut build`"})
    if args.json:
        print(json.dumps(rows))
        return 0
    width = max(len(r["device"]) for r in rows)
    kind_width = max(len(r["kind"]) for r in rows)
    for r in rows:
        print(f"{r['device']:<{width}}  {r['kind']:<{kind_width}}  {r['description']}")
    return 0


def cmd_lut_build(args: argparse.Namespace) -> int:
    from hardware_models.lut import build_lut

    graph = _graph_for(args)
    lut = build_lut(
        graph,
        device=args.device,
        threads=args.threads,
        batch_size=args.batch_size,
        grid_points=args.grid_points,
        granule=args.granule,
        calibration_variants=args.calibration_variants,
        sweeps=args.sweeps,
        calibration_runs=args.calibration_runs,
        model_name=args.model,
    )
    lut.save(args.out)
    print(
        f"{args.out}: {lut.meta['entries']} entries (widths in steps of {lut.granule}) in "
        f"{lut.meta['build_seconds']:.1f}s; calibration "
        f"latency = {lut.curvature:.4f} x sum^2 + {lut.scale:.3f} x sum + {lut.overhead_ms:.3f} ms (sum: layer sum)"
    )
    return 0


def cmd_lut_validate(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from hardware_models.base import Variant
    from hardware_models.lut import LookupTable, validate
    from hardware_models.measure import measurer_for

    lut = LookupTable.load(args.lut)
    if lut.device not in MEASURED_DEVICES:
        raise PruneGymError(
            f"a table is validated on the device it was built for; expected one of {', '.join(MEASURED_DEVICES)}, "
            f"got a table for {lut.device!r}"
        )
    graph = _graph_for(args)
    threads = lut.threads or 1
    measurer = measurer_for(lut.device, threads=threads)
    where = lut.meta.get("gpu", "GPU") if lut.device == "cuda" else f"{threads} thread(s)"

    def predictor(table: LookupTable) -> Callable[[Variant], float]:
        return lambda variant: table.predict_variant(graph, variant, batch_size=table.batch_size)

    others = {str(path): LookupTable.load(path) for path in args.also}
    for path, other in others.items():
        if (other.device, other.batch_size, other.threads) != (lut.device, lut.batch_size, lut.threads):
            raise PruneGymError(
                f"--also tables are scored on the same measurements; expected a {lut.device} table at batch size "
                f"{lut.batch_size} with {lut.threads} thread(s), got {other.device} at batch size {other.batch_size} "
                f"with {other.threads} thread(s) in {path}"
            )
        other.predict_variant(graph, Variant(), batch_size=other.batch_size)  # a table for another model fails now

    def measure(models: list[torch.nn.Module]) -> list[float]:
        return [s.p50_ms for s in measurer.measure_interleaved(models, graph.input_shape, batch_size=lut.batch_size)]

    report = validate(
        predictor(lut),
        graph,
        measure,
        samples=args.samples,
        seed=args.seed,
        granule=lut.granule if args.granule is None else args.granule,
        rounds=args.rounds,
        others={path: predictor(other) for path, other in others.items()},
        progress=not args.json,
    )
    record = {k: v for k, v in asdict(report).items() if k != "rows"}
    if args.json:
        print(json.dumps(record))
    else:
        print(
            f"LUT ({lut.device}, {lut.runtime}, {where}) on {args.model}, {report.samples} variants:\n"
            f"  LUT : MAPE {report.mape:.1%}  within 10% {report.within_10pct:.0%}  Spearman {report.spearman:.3f}\n"
            f"  MACs: MAPE {report.macs_mape:.1%}  within 10% {report.macs_within_10pct:.0%}  "
            f"Spearman {report.macs_spearman:.3f}" + "\n"
            f"  relative to the dense model measured alongside (cancels host-speed drift): LUT MAPE "
            f"{report.relative['mape']:.1%}, within 10% {report.relative['within_10pct']:.0%}, Spearman "
            f"{report.relative['spearman']:.3f}; MACs MAPE {report.relative['macs_mape']:.1%}, within 10% "
            f"{report.relative['macs_within_10pct']:.0%}, Spearman {report.relative['macs_spearman']:.3f}"
        )
        if report.repeatability:
            r = report.repeatability
            print(
                f"  the host's own noise (first pass against last): MAPE {r['mape']:.1%}, within 10% "
                f"{r['within_10pct']:.0%}, Spearman {r['spearman']:.3f}"
                + (
                    f"; median of the first half of the passes against the second half: MAPE {r['halves_mape']:.1%}, "
                    f"Spearman {r['halves_spearman']:.3f}"
                    if "halves_spearman" in r
                    else ""
                )
            )
        for path, o in report.others.items():
            print(
                f"  {path} on the same measurements, relative: MAPE {o['mape']:.1%}, within 10% "
                f"{o['within_10pct']:.0%}, Spearman {o['spearman']:.3f}"
            )
    if args.rows is not None:
        args.rows.write_text(json.dumps(report.rows, indent=1))
    return 0


def _train_config(args: argparse.Namespace):
    from agents.train import TrainRunConfig

    return TrainRunConfig(
        target=target_from_args(args),
        budget_range=tuple(args.budget_range) if args.budget_range else None,
        reward=args.reward,
        algo=args.algo,
        episodes=args.episodes if args.episodes is not None else 100,
        warmup_episodes=args.warmup_episodes,
        seed=args.seed,
        n_envs=args.n_envs,
        val_images=args.val_images,
        bn_batches=args.bn_batches,
        finetune_steps=args.finetune_steps,
        dynamic_skip=args.dynamic_skip,
        centre_on_uniform=args.centre_on_uniform,
        **({"levels": args.levels} if args.levels is not None else {}),
        action_std=args.action_std,
        sensitivity=args.sensitivity,
        action_mapping=args.action_mapping,
        episodes_per_update=args.episodes_per_update,
        calibrate_latency=args.calibrate_latency,
        aim=args.search_aim,
    )


def _executor(args: argparse.Namespace) -> LocalExecutor | RayExecutor:
    """The executor of ``--executor`` and ``--ray-address``, its Ray workers of ``--threads`` torch threads (default
    1); a context manager that closes it."""
    from pruning_core.executor import make_executor

    return make_executor(args.executor, address=args.ray_address, threads=args.threads or 1)


def cmd_train(args: argparse.Namespace) -> int:
    from agents.train import run_name, train_agent

    _set_threads(args)
    # the environments' threads: --threads (default 1) on Ray actors, this process's torch threads in processes here
    with _executor(args) as executor:
        if args.resume is not None:
            result = train_agent(None, args.resume, resume=True, episodes=args.episodes, executor=executor)
        else:
            config = _train_config(args)
            out = args.out if args.out is not None else Path("runs") / run_name(config)
            result = train_agent(config, out, executor=executor)
    state = result.state
    if state.best_plan is None:  # a run over a budget range keeps its policy only
        print(
            f"{result.run}: {state.episodes} episodes in {result.seconds:.0f}s; policy saved: "
            f"`prunegym apply --policy {result.run} --budget B` applies it"
        )
        return 0
    print(
        f"{result.run}: {state.episodes} episodes in {result.seconds:.0f}s; best val top-1 {state.best_top1:.4f} "
        f"(reward {state.best_reward:.4f}) at episode {state.best_episode}; best plan in "
        f"{result.run / 'best_plan.json'}"
    )
    return 0


def _finetune_config(args: argparse.Namespace):
    from pruning_core.finetune import finetune_recipe

    return finetune_recipe(args.finetune_epochs, lr=args.lr, seed=args.seed)


def target_from_args(args: argparse.Namespace, **fields: Any) -> Target:
    """The target named by the target arguments (see :func:`add_target_args`); ``fields`` replace theirs (for a
    command that takes its budgets its own way)."""
    from envs.target import Target

    resolve_model_args(args)
    named = {
        "model": args.model,
        "checkpoint": str(args.checkpoint) if args.checkpoint is not None else None,
        "data": args.data,
        "data_root": args.data_root,
        "device": args.device,
        "budget": getattr(args, "budget", None),
        "budget_metric": getattr(args, "budget_metric", None),
        "input_size": getattr(args, "input_size", None),
    }
    return Target(**{name: value for name, value in {**named, **fields}.items() if value is not None})


def env_from_args(args: argparse.Namespace, **settings: Any) -> LayerPruneEnv:
    """The environment of the target arguments (see :func:`target_from_args`), with ``settings`` for ``make_env``."""
    from envs.factory import make_env

    return make_env(target_from_args(args), **{"progress": True, **settings})


def cmd_apply(args: argparse.Namespace) -> int:
    from agents.apply import apply_policy

    _set_threads(args)
    with _executor(args) as executor:
        result = apply_policy(
            args.policy, target_from_args(args), finetune=_finetune_config(args), out=args.out, executor=executor
        )
    evaluations = result.record.evaluations
    print_records([result.record])
    print(f"the new model cost {evaluations} evaluations ({evaluations - 1} probes, 1 the policy's plan)")
    print(f"saved {args.out} (report.json, plan.json, weights.pt)")
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    from agents.apply import finish_plan
    from pruning_core.baselines import baseline_plan

    _set_threads(args)
    env = env_from_args(args)
    start = time.perf_counter()
    plan = baseline_plan(args.method, env.budget_problem())
    seconds = time.perf_counter() - start
    with _executor(args) as executor:
        result = finish_plan(
            args.method,
            env,
            plan,
            env.scorer.dataset,
            finetune=_finetune_config(args),
            out=args.out,
            base_model=args.model,
            search_seconds=seconds,
            executor=executor,
        )
    print_records([result.record])
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from scripts.demo import DEMO_FINETUNE_EPOCHS, run_demo, run_demo_seeds

    _set_threads(args)
    run = run_demo if args.seeds == 1 else functools.partial(run_demo_seeds, args.seeds)
    run(
        model=args.model,
        checkpoint=args.checkpoint,
        data=args.data,
        data_root=args.data_root,
        budget=args.budget,
        episodes=args.episodes,
        finetune_epochs=DEMO_FINETUNE_EPOCHS if args.finetune_epochs is None else args.finetune_epochs,
        centre_on_uniform=args.centre_on_uniform,
        action_std=args.action_std,
        seed=args.seed,
        out=args.out,
    )
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from agents.benchmark import BenchmarkConfig, rewrite_tables, run_benchmark

    if args.budget is not None:
        raise PruneGymError(f"expected --budgets (one or more); got {' '.join(['--budget', *args.budget])}")
    if args.budget_metric is not None:
        raise PruneGymError(
            f"budgets are fractions of the dense model's latency on --device; got --budget-metric {args.budget_metric}"
        )
    if args.tables_only:
        rewrite_tables(args.out)
        print((args.out / "results.md").read_text())
        return 0
    _set_threads(args)
    config = BenchmarkConfig(
        target=target_from_args(args, budget_metric="latency"),
        out=args.out,
        budgets=tuple(args.budgets),
        methods=tuple(args.methods),
        episodes=args.episodes,
        finetune_epochs=args.finetune_epochs,
        seeds=args.seeds,
        val_images=args.val_images,
        bn_batches=args.bn_batches,
        finetune_steps=args.finetune_steps,
        rerank=args.rerank,
        rerank_steps=args.rerank_steps,
        match_greedy=args.match_greedy,
        transfer_from=str(args.transfer_from) if args.transfer_from else None,
        centre_on_uniform=args.centre_on_uniform,
        **({"levels": args.levels} if args.levels is not None else {}),
        action_std=args.action_std,
        sensitivity=args.sensitivity,
        action_mapping=args.action_mapping,
        agent_reward=args.agent_reward,
        episodes_per_update=args.episodes_per_update,
        calibrate_latency=args.calibrate_latency,
        search_aim=args.search_aim,
        finish_again_before=args.finish_again_before,
        executor=args.executor,
        ray_address=args.ray_address,
        ray_workers=args.ray_workers,
        ray_threads=args.threads or 1,
    )
    run_benchmark(config)
    print((args.out / "results.md").read_text())
    return 0


def add_dynamic_args(parser: argparse.ArgumentParser) -> None:
    """The dynamic-skip report's arguments, the target's first (``prunegym dynamic`` and ``scripts.dynamic_report``);
    each mirrors a field of :class:`agents.dynamic.DynamicReportConfig`."""
    from pruning_core.dynamic import DEFAULT_SEARCH_LEVELS

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


def dynamic_config_from_args(args: argparse.Namespace) -> DynamicReportConfig:
    """The dynamic-skip report of the arguments of :func:`add_dynamic_args`."""
    from agents.dynamic import DynamicReportConfig

    return DynamicReportConfig(
        target=target_from_args(args),
        out=args.out,
        plan=args.plan,
        uniform=args.uniform,
        finetune_epochs=args.finetune_epochs,
        gate_epochs=args.gate_epochs,
        joint_epochs=args.joint_epochs,
        joint_lr=args.joint_lr,
        rate_penalty=args.rate_penalty,
        rate_target=args.rate_target,
        block_target=args.block_target,
        joint_distill=args.joint_distill,
        joint_full_weight=args.joint_full_weight,
        thresholds=tuple(args.thresholds),
        latency_images=args.latency_images,
        search_thresholds=args.search_thresholds,
        search_levels=tuple(args.search_levels),
        search_images=args.search_images,
        search_device=args.search_device,
        search_stop=args.search_stop,
        static_only=args.static_only,
        compare=tuple(args.compare),
        retime=args.retime,
        train_only=args.train_only,
    )


def report_dynamic(config: DynamicReportConfig, threads: int | None) -> None:
    """Run the dynamic-skip report with ``threads`` torch threads (default 2), printing its progress, then its table
    or where it stopped."""
    from agents.dynamic import run_dynamic_report

    torch.set_num_threads(threads or 2)
    result = run_dynamic_report(config, log=lambda line: print(line, flush=True))
    if result.stage == "static":
        print(f"static model saved in {config.out}; pass --compare {config.out} to a report to time it there")
    elif result.stage == "trained":
        print(f"trained and saved in {config.out}; run again without --train-only to time the models")
    else:
        print(result.table)


def cmd_dynamic(args: argparse.Namespace) -> int:
    report_dynamic(dynamic_config_from_args(args), args.threads)
    return 0


def add_target_args(
    parser: argparse.ArgumentParser, *, model_default: str | None = "small_cnn", budget: bool = True
) -> None:
    """Model, checkpoint, data, threads, device and budget arguments (shared by commands and scripts).

    Args:
        parser: The parser to add them to.
        model_default: ``--model``'s default; None makes it required.
        budget: Add ``--budget`` and ``--budget-metric`` (False for a command that takes budgets its own way).
    """
    default = f" (default {model_default})" if model_default else ""
    _add_model_args(
        parser,
        model_default=model_default,
        required=model_default is None,
        help=f"zoo name, tv:<torchvision name> or timm:<timm name>{default}",
    )
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: checkpoints/<model>_<data>.pt")
    _add_data_args(parser)
    parser.add_argument("--device", default="host-cpu", help="target device (see `prunegym devices`)")
    if budget:
        parser.add_argument("--budget", type=float, default=0.5, help="fraction of the dense model's cost")
        parser.add_argument("--budget-metric", default="latency", choices=["latency", "macs", "params"])


def _add_search_args(parser: argparse.ArgumentParser) -> None:
    """How a search scores plans (``ScoreConfig.finetune_steps``) and DQN's sparsity levels (``TrainRunConfig.levels``),
    shared by ``train`` and ``benchmark``."""
    parser.add_argument(
        "--finetune-steps",
        type=int,
        default=DEFAULT_FINETUNE_STEPS,
        help="short fine-tune steps inside every search's score (0: adaptive BN alone)",
    )
    parser.add_argument(
        "--levels",
        type=int,
        default=None,
        help=(
            f"sparsity levels of DQN's action (default {DEFAULT_LEVELS}; with --centre-on-uniform, "
            "3 = keep, uniform, thinnest)"
        ),
    )


EXECUTOR_HELP = {
    "searches": "where greedy-lut, random-search and tpe score candidates and the plans are fine-tuned: here, or on "
    "Ray workers (same results; latency is measured here)",
    "envs": "where the environments run: processes here (--n-envs > 1), or Ray actors (same results)",
    "finetune": "where the plan is fine-tuned: here, or on a Ray worker (same result; latency is measured here)",
}
"""What ``--executor`` moves to Ray, per command kind (see :func:`add_executor_args`)."""


def add_executor_args(parser: argparse.ArgumentParser, *, role: str = "searches") -> None:
    """Where the work of a command runs (one of :data:`EXECUTOR_HELP`): a benchmark's searches and fine-tunes
    (``BenchmarkConfig.executor``, ``ray_address``, ``ray_workers``), an agent's environments (``train_agent``'s
    executor; one Ray actor per environment) or one plan's fine-tune (``finish_plan``'s)."""
    parser.add_argument("--executor", default="local", choices=["local", "ray"], help=EXECUTOR_HELP[role])
    parser.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="join this Ray cluster (`ray start --head` prints it); default: start a local Ray instance",
    )
    if role != "searches":
        return
    parser.add_argument(
        "--ray-workers", type=int, default=None, help="Ray workers scoring candidates (default: one per Ray CPU)"
    )


def _add_agent_args(parser: argparse.ArgumentParser) -> None:
    """How the agents act and explore (train, benchmark and demo)."""
    parser.add_argument(
        "--centre-on-uniform",
        action="store_true",
        help="the middle of the action range is the uniform sparsity that meets the budget (0 and max at the ends)",
    )
    parser.add_argument(
        "--action-std",
        type=float,
        default=None,
        help="initial exploration of continuous agents, in action-range units (default 1.0 PPO/SAC, 0.5 TD3/DDPG)",
    )


def _add_learner_args(parser: argparse.ArgumentParser) -> None:
    """What the agents observe and how they start and learn (train and benchmark)."""
    parser.add_argument(
        "--sensitivity",
        action="store_true",
        help="probe every group first (2 plans each, cached): the agents observe the probes and, with --action-mapping "
        "scaled, start from the plan they suggest; with --dynamic-skip, each gated block is also skipped for half of "
        "val (1 plan each), and the agents observe its gate scores and what skipping it costs",
    )
    parser.add_argument(
        "--action-mapping",
        default="clip",
        choices=["clip", "scaled"],
        help="clip: AMC's clipping towards the budget; scaled: shifts from a prior plan, the whole plan then moved "
        "to the budget (every episode lands on it)",
    )
    parser.add_argument("--episodes-per-update", type=int, default=4, help="PPO's episodes per policy update")
    parser.add_argument(
        "--calibrate-latency",
        action="store_true",
        help="on a measured device, time a few plans beside the dense model first and correct the lookup table",
    )
    parser.add_argument(
        "--search-aim",
        type=float,
        default=1.0,
        help="every plan aims at this fraction of the budget (0.98: where the measured budget check aims, so that "
        "it moves no plan; default 1)",
    )


def _add_pretrain_parser(sub: Any) -> None:
    p = sub.add_parser("pretrain", help="train a dense model (resumable; --epochs 0 saves random weights)")
    _add_model_args(
        p,
        model_default=None,
        required=True,
        help="zoo name (resnet20, resnet56, small_cnn, ...), tv:<torchvision name> or timm:<timm name>",
    )
    _add_data_args(p)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--cutout", type=int, default=0, help="Cutout square side in pixels (0: off)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (fast on CPUs with AMX)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="checkpoint to write")
    p.add_argument("--resume", action="store_true", help="continue from <out>.resume")
    p.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="start from this checkpoint: the same model, or a shallower CIFAR ResNet (its blocks are copied and "
        "the extra blocks start as identities)",
    )
    p.add_argument("--distill-from", type=Path, default=None, help="teacher checkpoint (knowledge distillation)")
    p.add_argument("--distill-weight", type=float, default=0.5, help="weight of the teacher's soft labels")
    p.add_argument("--distill-temperature", type=float, default=4.0)
    p.set_defaults(handler=cmd_pretrain)


def _add_evaluate_parser(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="top-1 accuracy, MACs and parameters of a checkpoint or pruned model")
    _add_model_args(p, model_default=None, required=False, help="expected model name (checked against the checkpoint)")
    p.add_argument("--checkpoint", type=Path, default=None, help="dense checkpoint")
    p.add_argument("--pruned", type=Path, default=None, help="pruned-model folder written by prunegym prune")
    _add_data_args(p)
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--latency-images", type=int, default=1000, help="images timed one by one for a model with skip gates"
    )
    p.set_defaults(handler=cmd_evaluate)


def _add_prune_parser(sub: Any) -> None:
    p = sub.add_parser("prune", help="apply a plan (or uniform sparsity), recalibrate BN, fine-tune, save")
    _add_model_args(p, model_default=None, required=False, help="expected model name (checked against the checkpoint)")
    p.add_argument("--checkpoint", type=Path, required=True)
    _add_data_args(p)
    p.add_argument("--plan", type=Path, default=None, help="plan JSON (keys: sparsity, criterion, ...)")
    p.add_argument("--uniform", type=float, default=None, help="the same sparsity in every group")
    p.add_argument("--criterion", default="l1", choices=["l1", "l2", "taylor", "activation", "bn", "random"])
    p.add_argument("--granularity", default="channel", choices=["channel", "unstructured", "nm"])
    p.add_argument("--nm", default="2:4", help="N:M pattern for --granularity nm")
    p.add_argument("--round-to", type=int, default=1, help="round kept channels to a multiple of this")
    p.add_argument("--bn-batches", type=int, default=20, help="training batches for BN recalibration")
    p.add_argument("--finetune-epochs", type=int, default=0)
    p.add_argument("--schedule", default="cosine", choices=["cosine", "constant"])
    p.add_argument("--lr", type=float, default=0.01, help="fine-tuning learning rate")
    p.add_argument("--distill", type=float, default=0.0, help="weight of distillation from the dense model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="pruned-model folder to write")
    p.set_defaults(handler=cmd_prune)


def _add_export_parser(sub: Any) -> None:
    p = sub.add_parser("export", help="export a pruned model to ONNX (optionally INT8)")
    p.add_argument("--pruned", type=Path, required=True)
    p.add_argument("--model-py", default=None, metavar="FILE.py:FUNCTION", help=MODEL_PY_HELP)
    p.add_argument("--format", default="onnx", choices=["onnx"])
    p.add_argument("--int8", action="store_true", help="also write an INT8 statically quantized model")
    _add_data_args(p)
    p.add_argument("--json", action="store_true", help="print the report as one JSON line")
    p.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    p.set_defaults(handler=cmd_export)


def _add_devices_parser(sub: Any) -> None:
    p = sub.add_parser("devices", help="list the target devices and how their latency is known")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_devices)


def _add_lut_parser(sub: Any) -> None:
    lut = sub.add_parser("lut", help="build or validate a per-layer latency lookup table")
    lut_sub = lut.add_subparsers(dest="lut_command", required=True)
    p = lut_sub.add_parser("build", help="profile every layer shape of a model on this host")
    p.add_argument("--device", required=True, choices=list(MEASURED_DEVICES))
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--model")
    group.add_argument("--model-py", default=None, metavar="FILE.py:FUNCTION", help=MODEL_PY_HELP)
    p.add_argument(
        "--input-shape", "--input-size", default=None, help="C,H,W (default: 1,8,8 for small_cnn, else 3,32,32)"
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--grid-points", type=int, default=8, help="channel counts profiled per dimension")
    p.add_argument(
        "--granule",
        type=int,
        default=DEFAULT_GRANULE,
        help="profile widths in multiples of this; searches then keep pruned widths at multiples of it (1: any)",
    )
    p.add_argument(
        "--calibration-variants",
        type=int,
        default=DEFAULT_CALIBRATION_VARIANTS,
        help="random pruned models measured whole to calibrate (beside the dense and the thinnest)",
    )
    p.add_argument("--sweeps", type=int, default=5, help="round-robin passes over all layer entries (median kept)")
    p.add_argument("--calibration-runs", type=int, default=60, help="timed calls of each calibration model")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(handler=cmd_lut_build)
    p = lut_sub.add_parser("validate", help="compare a table with measurements of random pruned variants")
    p.add_argument("--lut", type=Path, required=True)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--model")
    group.add_argument("--model-py", default=None, metavar="FILE.py:FUNCTION", help=MODEL_PY_HELP)
    p.add_argument("--input-shape", "--input-size", default=None)
    p.add_argument("--samples", type=int, default=50)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--granule", type=int, default=None, help="variants' widths in multiples of this (default: the table's)"
    )
    p.add_argument("--rounds", type=int, default=3, help="passes over all variants (each timed beside dense)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--rows", type=Path, default=None, help="write every variant's figures here as JSON")
    p.add_argument(
        "--also",
        type=Path,
        nargs="+",
        default=[],
        help="other tables (say, other builds) scored on the same measurements, relative to dense",
    )
    p.set_defaults(handler=cmd_lut_validate)


def _add_train_parser(sub: Any) -> None:
    p = sub.add_parser("train", help="train an RL agent that searches per-layer sparsity for a device")
    add_target_args(p)
    p.add_argument("--algo", default="ppo", choices=["dqn", "ppo", "sac", "td3", "ddpg"])
    p.add_argument("--episodes", type=int, default=None, help="episodes in all (default 100)")
    p.add_argument("--warmup-episodes", type=int, default=25, help="random episodes first (off-policy algorithms)")
    p.add_argument("--reward", default="accuracy", choices=["accuracy", "lagrangian", "amc-flops", "residual"])
    p.add_argument("--n-envs", type=int, default=1, help="environments in parallel (processes, or Ray actors)")
    p.add_argument("--val-images", type=int, default=1000)
    p.add_argument("--bn-batches", type=int, default=10)
    _add_search_args(p)
    p.add_argument("--dynamic-skip", action="store_true", help="also choose a gate threshold per residual block")
    _add_agent_args(p)
    _add_learner_args(p)
    p.add_argument(
        "--budget-range",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        default=None,
        help="draw each episode's budget from [LOW, HIGH]: one policy for any budget (to apply to new models)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="run folder (default runs/<model>__<device>__...)")
    p.add_argument("--resume", type=Path, default=None, help="continue the run in this folder")
    add_executor_args(p, role="envs")
    p.set_defaults(handler=cmd_train)


def _add_apply_and_baseline_parser(sub: Any) -> None:
    for name, handler, text in (
        ("apply", cmd_apply, "apply a learned policy to a model, fine-tune, report"),
        ("baseline", cmd_baseline, "run a heuristic baseline at a budget, fine-tune, report"),
    ):
        p = sub.add_parser(name, help=text)
        if name == "apply":
            p.add_argument("--policy", type=Path, required=True, help="run folder of `prunegym train`")
        else:
            p.add_argument(
                "--method",
                required=True,
                choices=["uniform-l1", "global-magnitude", "slimming", "taylor", "activation"],
            )
        add_target_args(p)
        p.add_argument("--finetune-epochs", type=int, default=0)
        p.add_argument("--lr", type=float, default=0.01)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--out", type=Path, required=True)
        add_executor_args(p, role="finetune")
        p.set_defaults(handler=handler)


def _add_benchmark_parser(sub: Any) -> None:
    p = sub.add_parser("benchmark", help="agents and baselines at several budgets and seeds; tables and plots")
    add_target_args(p, budget=False)
    p.add_argument("--budgets", type=float, nargs="+", default=[0.7, 0.5])
    # Refused by name in cmd_benchmark: left out, argparse would read --budget as an abbreviation of --budgets.
    p.add_argument("--budget", nargs="*", default=None, help=argparse.SUPPRESS)
    p.add_argument("--budget-metric", default=None, help=argparse.SUPPRESS)
    p.add_argument("--methods", nargs="+", default=["all"], help="'all' or names (dqn ppo uniform-l1 ...)")
    p.add_argument("--episodes", type=int, default=100, help="episodes of each agent = evaluations of random search")
    p.add_argument("--finetune-epochs", type=int, default=2)
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--val-images", type=int, default=1000)
    p.add_argument("--bn-batches", type=int, default=10)
    _add_search_args(p)
    p.add_argument("--transfer-from", type=Path, default=None, help="also apply this run's policy (zero search)")
    _add_agent_args(p)
    _add_learner_args(p)
    p.add_argument("--agent-reward", default="accuracy", choices=["accuracy", "lagrangian", "amc-flops", "residual"])
    p.add_argument(
        "--rerank",
        type=int,
        default=0,
        metavar="K",
        help="every search scores its K best plans within the budget again with --rerank-steps SGD steps and keeps "
        "the best (counted in its evaluations; default 0: none)",
    )
    p.add_argument("--rerank-steps", type=int, default=DEFAULT_FINETUNE_STEPS, help="the re-score's SGD steps")
    p.add_argument(
        "--match-greedy",
        action="store_true",
        help="at each budget greedy-lut searches first; the agents, random-search and tpe then get its evaluation "
        "count instead of --episodes",
    )
    add_executor_args(p)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--finish-again-before",
        metavar="TIME",
        help="finish again (searches reused) the cells of --methods, --budgets and --seeds finished before this ISO "
        "time, e.g. 2026-12-04T11:00; the old records go to superseded.json",
    )
    p.add_argument(
        "--tables-only",
        action="store_true",
        help="run nothing: bring --out's results.json up to date and write its tables and plots again",
    )
    p.set_defaults(handler=cmd_benchmark)


def _add_dynamic_parser(sub: Any) -> None:
    p = sub.add_parser(
        "dynamic",
        help="static pruning alone vs static + dynamic block skipping: gates, threshold search, batch-1 timing, "
        "report (resumable)",
    )
    add_dynamic_args(p)
    p.set_defaults(handler=cmd_dynamic)


def _add_demo_parser(sub: Any) -> None:
    p = sub.add_parser("demo", help="the embedded demo: PPO vs two baselines on small_cnn/digits, host-CPU latency")
    p.add_argument("--model", default="small_cnn")
    p.add_argument("--checkpoint", type=Path, default=None)
    _add_data_args(p)
    p.add_argument("--budget", type=float, default=0.5)
    p.add_argument("--episodes", type=int, default=60)
    p.add_argument("--finetune-epochs", type=int, default=None, help="every method's fine-tuning epochs (default: 20)")
    _add_agent_args(p)
    p.add_argument("--seed", type=int, default=0, help="the agent's seed and every method's fine-tuning seed")
    p.add_argument(
        "--seeds", type=int, default=1, help="run the demo for this many seeds from --seed (each in OUT/s<seed>)"
    )
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.set_defaults(handler=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    """The ``prunegym`` parser: one subcommand per use, each added by its ``_add_<command>_parser``."""
    parser = argparse.ArgumentParser(prog="prunegym", description="Hardware-aware RL pruning of PyTorch models.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (
        _add_pretrain_parser,
        _add_evaluate_parser,
        _add_prune_parser,
        _add_export_parser,
        _add_devices_parser,
        _add_lut_parser,
        _add_train_parser,
        _add_apply_and_baseline_parser,
        _add_benchmark_parser,
        _add_dynamic_parser,
        _add_demo_parser,
    ):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``prunegym`` command."""
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        resolve_model_args(args)
        return handler(args)
    except PruneGymError as exc:
        print(f"prunegym {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
