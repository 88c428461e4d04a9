"""Static pruning alone against static pruning plus dynamic block skipping, image by image at batch 1.

One static plan (``plan``, or ``uniform``; 0 keeps the dense model) is applied, its BatchNorm recalibrated and the
model fine-tuned with the shared recipe. Then skip gates are added to it and trained with its backbone frozen
(``gate_epochs``), then optionally jointly with the backbone (``joint_epochs``; the static model then gets as many
extra fine-tuning epochs, for a fair row). Finally every model is timed image by image on the test split (batch 1, one
thread) in one pass, taking turns every 25 images: the static model(s) and the gated model at each of ``thresholds``,
with real skipping. Reported: accuracy, measured mean latency, the expected latency from the measured parts,
per-block execution rates, and accuracy and latency by the number of blocks an image used (tables and plots:
:mod:`agents.dynamic_tables`). ``retime`` times the models again (a timing made while the host was busy is skewed).
Whenever the models are timed again (``retime``, other ``thresholds`` or ``compare``, a newer timing method), the
earlier timing stays in the report (``earlier_timings``) and the table lists them all. The static models, the gates
and the timing are saved as soon as they exist, and the long trainings (the static model's extra epochs, the gates)
after every epoch; running again resumes.

To compare at equal accuracy, static pruning at other ratios can be timed in the same pass: make each with
``static_only`` in its own folder (same epochs), then pass the folders to ``compare``; the table then sets each gated
setting against static pruning alone at the same accuracy.

From Python::

    from pathlib import Path

    from agents import DynamicReportConfig, run_dynamic_report
    from envs import Target

    result = run_dynamic_report(DynamicReportConfig(Target(device="pixel-a76"), Path("runs/dyn"), uniform=0.3))
    print(result.table)
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, cast

import torch
from torch import nn

from agents.dynamic_tables import pick_searched, setting_label, write_dynamic_tables
from envs.factory import make_env
from envs.layer_prune import LayerPruneEnv
from envs.target import Target
from hardware_models.dynamic import measure_parts
from hardware_models.measure import torch_threads
from pruning_core.checkpoint import load_torch, save_torch
from pruning_core.data import ImageDataset, atomic_write_bytes
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
from pruning_core.errors import CheckpointError, PlanError, PruneGymError
from pruning_core.finetune import finetune_model, finetune_recipe, prune_and_finetune
from pruning_core.plan import PruningPlan
from pruning_core.serialize import load_pruned, save_pruned

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
SEARCH_DEVICES = ("cpu", "cuda")
_FLOATS = ("uniform", "joint_lr", "rate_penalty", "rate_target", "block_target", "joint_distill", "joint_full_weight")


@dataclass(frozen=True)
class DynamicReportConfig:
    """One dynamic-skip report: a static plan, gates on top of it, and every model timed at batch 1; checked when
    built. The report's folder holds its settings; running again with other settings there is refused.

    Example (the committed small_cnn on digits, pruned uniformly by 30%)::

        DynamicReportConfig(Target(device="pixel-a76"), Path("runs/dyn"), uniform=0.3, thresholds=(0.5,))
    """

    target: Target
    """The model, checkpoint, data and device (its budget is not used: the static plan is ``plan`` or ``uniform``)."""
    out: Path
    """Folder of the report (``report.json``, ``table.md``, plots, models), resumable."""
    plan: Path | None = None
    """The static plan (JSON); exactly one of ``plan`` and ``uniform``."""
    uniform: float | None = None
    """Uniform channel sparsity of the static plan (0 keeps the dense model); exactly one of ``plan`` and this."""
    finetune_epochs: int = 2
    """Fine-tuning epochs of the static model (the shared recipe)."""
    gate_epochs: int = 2
    """Gate training epochs with the backbone frozen."""
    joint_epochs: int = 0
    """Then epochs of gates and backbone fine-tuned jointly; the static model gets as many extra epochs (0: none)."""
    joint_lr: float = 0.01
    """Peak learning rate of the joint epochs and of the static model's extra ones."""
    rate_penalty: float = 0.5
    """Weight of the execution-rate penalty in gate training."""
    rate_target: float | None = None
    """Penalise only the mean execution rate above this budget (None: all of it)."""
    block_target: float | None = None
    """Instead pull every block's execution rate to this share of each batch (gates must tell inputs apart)."""
    joint_distill: float = 0.0
    """Weight of distillation from the dense model in the joint epochs (and in the static model's as many)."""
    joint_full_weight: float = 0.0
    """Weight of the every-block cross-entropy in the joint epochs (the sandwich rule; twice the cost per step)."""
    thresholds: tuple[float, ...] = (0.3, 0.5, 0.6, 0.7, 0.8)
    """Thresholds timed, each one for every block, each in [0, 1]."""
    latency_images: int = 2000
    """Test images timed one by one."""
    search_thresholds: int = 0
    """Also choose a threshold per block greedily on val, and time this many of the settings found (0: no search)."""
    search_levels: tuple[float, ...] = DEFAULT_SEARCH_LEVELS
    """Thresholds a block may take in the search."""
    search_images: int | None = None
    """Val images the search scores on (None: all)."""
    search_device: str = "cpu"
    """Where the search runs the model (``cpu`` or ``cuda``; latency comes from the parts measured on this host)."""
    search_stop: float = 0.45
    """Stop the search once the expected latency is the static part plus this share of every block's time."""
    static_only: bool = False
    """Stop once the static model (and its extra epochs) is trained and saved: a model for another report's
    ``compare``."""
    compare: tuple[Path, ...] = ()
    """Other report folders whose static model (with its extra epochs, if any) is timed in the same pass."""
    retime: bool = False
    """Time the models again although the report holds a timing by the current method; earlier timings are kept."""
    train_only: bool = False
    """Stop once the models are trained and saved; a later run times them (on a quiet host)."""

    def __post_init__(self) -> None:
        # Paths given as text and whole numbers given for fractions are kept as the command line gives them, so a
        # report made from Python resumes from the command line and back.
        for name in _FLOATS:
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, float(value))
        object.__setattr__(self, "out", Path(self.out))
        if self.plan is not None:
            object.__setattr__(self, "plan", Path(self.plan))
        object.__setattr__(self, "compare", tuple(Path(folder) for folder in self.compare))
        object.__setattr__(self, "thresholds", tuple(float(t) for t in self.thresholds))
        object.__setattr__(self, "search_levels", tuple(float(t) for t in self.search_levels))
        if (self.plan is None) == (self.uniform is None):
            raise PlanError(
                f"expected exactly one of a plan (JSON) or a uniform sparsity; got plan {self.plan} and uniform "
                f"{self.uniform}"
            )
        if not self.thresholds or not all(0.0 <= t <= 1.0 for t in self.thresholds):
            raise PlanError(f"expected one or more thresholds, each in [0, 1]; got {list(self.thresholds)}")
        if self.latency_images < 1:
            raise PruneGymError(f"latency_images must be >= 1; got {self.latency_images}")
        if self.search_thresholds < 0:
            raise PruneGymError(f"search_thresholds must be >= 0; got {self.search_thresholds}")
        if self.search_device not in SEARCH_DEVICES:
            raise PruneGymError(f"search_device must be one of {', '.join(SEARCH_DEVICES)}; got {self.search_device!r}")

    def settings(self) -> dict[str, Any]:
        """What a report folder must have been made with to be resumed (``report.json``'s ``settings``)."""
        settings: dict[str, Any] = {
            "model": self.target.model,
            "checkpoint": str(self.target.checkpoint),
            "plan": str(self.plan) if self.plan is not None else None,
            "uniform": self.uniform,
            "finetune_epochs": self.finetune_epochs,
            "gate_epochs": self.gate_epochs,
            "joint_epochs": self.joint_epochs,
            "joint_lr": self.joint_lr,
            "rate_penalty": self.rate_penalty,
            "latency_images": self.latency_images,
            "version": REPORT_VERSION,
        }
        if self.joint_distill:  # recorded only when used, so reports made before the option still resume
            settings["joint_distill"] = self.joint_distill
        if self.joint_full_weight:
            settings["joint_full_weight"] = self.joint_full_weight
        if self.rate_target is not None:
            settings["rate_target"] = self.rate_target
        if self.block_target is not None:
            settings["block_target"] = self.block_target
        return settings


@dataclass(frozen=True)
class DynamicReport:
    """Where a run of :func:`run_dynamic_report` stopped, and the report it left in its folder."""

    out: Path
    """The report's folder."""
    stage: Literal["static", "trained", "timed"]
    """``static``: the static models saved (``static_only``); ``trained``: the gates too (``train_only``);
    ``timed``: every model timed and the tables and plots written."""
    report: dict[str, Any]
    """The content of ``report.json`` as saved: settings, the static plan, gate training, the timing and its rows."""
    table: str | None
    """The Markdown written to ``table.md`` (None before the models are timed)."""


def run_dynamic_report(config: DynamicReportConfig, *, log: Callable[[str], None] | None = None) -> DynamicReport:
    """Make, resume or time again the report of ``config`` (see the module's docstring), saving as it goes.

    Args:
        config: What to prune, train and time, and where.
        log: Called with a line of progress as the models are timed (one per gated setting); None: nothing said.
            Progress bars go to stderr.

    Returns:
        Where the run stopped and the report it left.

    Raises:
        CheckpointError: If ``out`` holds a report made with other settings, or a ``compare`` folder has no static
            model.
        PruneGymError: If the search is asked to run on a CUDA GPU and there is none (and any bad input the
            pruning and training steps refuse).
    """
    say = log if log is not None else _quiet
    for folder in config.compare:
        if not (folder / "static" / "structure.json").exists():
            raise CheckpointError(
                f"compare expected a report folder with a static model in {folder}/static; found none"
            )
    if config.search_thresholds and config.search_device == "cuda" and not torch.cuda.is_available():
        raise PruneGymError("search_device cuda needs a CUDA GPU; none is available here")
    env = make_env(config.target, progress=True)
    config.out.mkdir(parents=True, exist_ok=True)
    report = _open_report(config)
    model = _static_model(config, env, report)
    equal = _static_equal(config, env, model)
    if config.static_only:
        return DynamicReport(config.out, "static", _as_saved(report), None)
    dataset = env.scorer.dataset
    gated = _gated_model(config, env, model, report)
    if config.train_only:
        return DynamicReport(config.out, "trained", _as_saved(report), None)
    picks = _threshold_search(config, report, gated, dataset) if config.search_thresholds else []
    # One pass over the test images, the models taking turns: a shared host drifts by 10-20% over minutes, so models
    # timed one after the other would be compared across that drift.
    compare = {str(folder): _compared_model(folder) for folder in config.compare}
    timing = report.get("timing", {})
    if (
        config.retime
        or timing.get("thresholds") != sorted(set(config.thresholds))
        or timing.get("method") != TIMING_METHOD
        or timing.get("compare", []) != list(compare)
        or timing.get("searched", []) != [p["thresholds"] for p in picks]
    ):
        models = _models_to_time(config, model, equal, gated, compare, picks)
        say(f"timing {len(models)} models, taking turns, on {config.latency_images} test images, 1 thread")
        _time_models(config, report, models, compare, picks, dataset, say)
        _save(config.out, report)
    table = write_dynamic_tables(report, config.out)
    return DynamicReport(config.out, "timed", _as_saved(report), table)


def _quiet(message: str) -> None:
    """Say nothing (:func:`run_dynamic_report`'s default ``log``)."""


def _as_saved(report: dict[str, Any]) -> dict[str, Any]:
    """``report`` as ``report.json`` holds it (its integer keys as text), whether it was made or read here."""
    return json.loads(json.dumps(report))


def _save(out: Path, report: dict[str, Any]) -> None:
    atomic_write_bytes(out / "report.json", lambda tmp: tmp.write_text(json.dumps(report, indent=1)))


def _open_report(config: DynamicReportConfig) -> dict[str, Any]:
    """The folder's report, or a new one; its settings are those of ``config``.

    Raises:
        CheckpointError: If the folder's report was made with other settings (resuming would mix rows of two
            experiments).
    """
    path = config.out / "report.json"
    report: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"dynamic": []}
    settings = config.settings()
    saved = report.setdefault("settings", settings)
    if saved != settings:
        changed = sorted(k for k in settings if saved.get(k) != settings[k])
        raise CheckpointError(
            f"{config.out} holds a report made with other settings ({', '.join(changed)}); expected the same as "
            f"before, got {', '.join(f'{k}={settings[k]}' for k in changed)}: use another out folder"
        )
    return report


def _static_model(config: DynamicReportConfig, env: LayerPruneEnv, report: dict[str, Any]) -> nn.Module:
    """The static model (made here before, or copied from a report with the same static part; else pruned and
    fine-tuned now and saved), in eval mode; the report records its plan."""
    static_dir = config.out / "static"
    if (static_dir / "structure.json").exists():
        loaded = load_pruned(static_dir)
        model, plan = loaded.model, loaded.plan
        macs_ratio, accuracy = loaded.meta["macs"] / loaded.meta["base_macs"], loaded.meta["accuracy"]
    else:
        engine, dataset = env.engine, env.scorer.dataset
        if config.plan is not None:
            plan = PruningPlan.load(config.plan)
        else:  # exactly one of plan and uniform is set (checked when the config was built)
            plan = PruningPlan.uniform(engine.group_names, cast(float, config.uniform), round_to=env.granule)
        pruned = prune_and_finetune(engine, plan, dataset, config=finetune_recipe(config.finetune_epochs))
        save_pruned(static_dir, pruned, base_model=config.target.model, classes=list(dataset.classes))
        model, macs_ratio, accuracy = pruned.model, pruned.macs_ratio, pruned.accuracy
    if "plan" not in report:
        report.update(
            model=config.target.model,
            plan=json.loads(plan.to_json()),
            macs_ratio=macs_ratio,
            accuracy=accuracy,
            finetune_epochs=config.finetune_epochs,
        )
        _save(config.out, report)
    return model.eval()


def _static_equal(config: DynamicReportConfig, env: LayerPruneEnv, model: nn.Module) -> nn.Module | None:
    """The static model fine-tuned as many more epochs as the joint ones (None without joint epochs), in eval mode.

    Joint fine-tuning trains the backbone further; the static model gets as many more epochs, for a fair row. It
    keeps the best val epoch, as the static model does, and is saved every epoch, so a killed run resumes.
    """
    if not config.joint_epochs:
        return None
    out = config.out
    equal = copy.deepcopy(model)
    if (out / "static_equal.pt").exists():
        equal.load_state_dict(load_torch(out / "static_equal.pt"))
    else:
        recipe = finetune_recipe(config.joint_epochs, lr=config.joint_lr, distill_weight=config.joint_distill)
        teacher = env.engine.model if config.joint_distill else None
        finetune_model(equal, env.scorer.dataset, recipe, teacher=teacher, resume=out / "static_equal.resume")
        save_torch(out / "static_equal.pt", equal.state_dict())
        (out / "static_equal.resume").unlink(missing_ok=True)
    return equal.eval()


def _gated_model(
    config: DynamicReportConfig, env: LayerPruneEnv, model: nn.Module, report: dict[str, Any]
) -> nn.Module:
    """The static model with skip gates, trained now (resumable; recorded in the report) or loaded, in eval mode."""
    out = config.out
    gated = add_gates(model)
    if (out / "gates.pt").exists():
        gated.load_state_dict(load_torch(out / "gates.pt"))
        return gated.eval()
    trained = train_gates(
        gated,
        env.scorer.dataset,
        epochs=config.gate_epochs,
        rate_penalty=config.rate_penalty,
        rate_target=config.rate_target,
        block_target=config.block_target,
        joint_epochs=config.joint_epochs,
        joint_lr=config.joint_lr,
        full_weight=config.joint_full_weight,
        teacher=env.engine.model if config.joint_distill else None,
        distill_weight=config.joint_distill,
        resume=out / "gates.resume",
    )
    save_torch(out / "gates.pt", gated.state_dict())
    (out / "gates.resume").unlink(missing_ok=True)
    report["gate_training"] = {
        **asdict(trained),
        "epochs": config.gate_epochs,
        "joint_epochs": config.joint_epochs,
        "rate_penalty": config.rate_penalty,
        "rate_target": config.rate_target,
        "block_target": config.block_target,
        "full_weight": config.joint_full_weight,
    }
    _save(out, report)
    return gated.eval()


def _threshold_search(
    config: DynamicReportConfig, report: dict[str, Any], gated: nn.Module, dataset: ImageDataset
) -> list[dict[str, Any]]:
    """The per-block settings to time: a greedy search on val (saved in ``threshold_search.json`` with its settings
    and reused while they match), then ``search_thresholds`` of its points (:func:`pick_searched`).

    The search prices a setting with the measured parts of the gated model: those of the report's last timing when
    it has one, else parts measured now (one thread).
    """
    path = config.out / "threshold_search.json"
    levels = sorted(config.search_levels)
    settings = {"levels": levels, "images": config.search_images, "stop": config.search_stop}
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
        stop = parts.static_ms + config.search_stop * sum(parts.block_ms[name] for name in names)
        steps = search_thresholds(
            searched.to(config.search_device),
            dataset,
            parts,
            levels=tuple(levels),
            limit=config.search_images,
            stop_ms=stop,
        )
        saved = {"settings": settings, "parts": asdict(parts), "path": [asdict(step) for step in steps]}
        atomic_write_bytes(path, lambda tmp: tmp.write_text(json.dumps(saved, indent=1)))
    return pick_searched(saved["path"], config.search_thresholds)


def _compared_model(folder: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The static model of another report folder, with its extra epochs when it has them, and how it was made."""
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


def _models_to_time(
    config: DynamicReportConfig,
    model: nn.Module,
    equal: nn.Module | None,
    gated: nn.Module,
    compare: dict[str, tuple[nn.Module, dict[str, Any]]],
    picks: list[dict[str, Any]],
) -> dict[str, nn.Module]:
    """Every model of the pass by name: the static one(s), the compared ones, the gated one at each threshold and at
    each per-block setting picked from the search."""
    names = [name for name, _ in gated_blocks(gated)]
    for _, block in gated_blocks(gated):
        block.reset_counters()  # gate training leaves its val pass in the counters
    models: dict[str, nn.Module] = {"static": model}
    if equal is not None:
        models["static_equal"] = equal
    for where, (other, _) in compare.items():
        models[f"compare:{where}"] = other
    for threshold in sorted(set(config.thresholds)):
        models[f"t={threshold}"] = copied = copy.deepcopy(gated)
        set_thresholds(copied, dict.fromkeys(names, threshold))
    for number, point in enumerate(picks, 1):
        models[f"search:{number}"] = copied = copy.deepcopy(gated)
        set_thresholds(copied, point["thresholds"])
    return models


def _time_models(
    config: DynamicReportConfig,
    report: dict[str, Any],
    models: dict[str, nn.Module],
    compare: dict[str, tuple[nn.Module, dict[str, Any]]],
    picks: list[dict[str, Any]],
    dataset: ImageDataset,
    say: Callable[[str], None],
) -> None:
    """Time ``models`` (:func:`_models_to_time`) in one pass, taking turns, and write the pass into ``report``; the
    report's earlier timing, if any, is kept under ``earlier_timings``."""
    thresholds = sorted(set(config.thresholds))
    if report.get("timing"):  # kept: a timing made on a busy host is still evidence of how far timings move
        earlier = {key: report[key] for key in _TIMED_KEYS if key in report}
        report.setdefault("earlier_timings", []).append(earlier)
    with torch_threads(1):
        rows = time_models_per_image(models, dataset, "test", limit=config.latency_images)
        rates = {  # per gated model (one threshold, or searched per block)
            key: {name: block.execution_rate() for name, block in gated_blocks(gated_model)}
            for key, gated_model in models.items()
            if key.startswith(("t=", "search:"))
        }
        # The parts do not depend on the threshold (any above 0 makes every block skippable). Measuring resets
        # the counters, which is why the rates were read first.
        probe = next(iter(dataset.batches("test", 1)))[0]
        parts = measure_parts(models[f"t={thresholds[-1]}"], probe, reference=models["static"])
    # The parts were timed on one input at another moment than the pass: carried over by the static model, which
    # both timings include (expected = measured static x expected / static, each ratio measured side by side).
    report["static"] = static_row(rows["static"])
    scale = report["static"]["latency_ms_measured"] / parts.reference_ms  # type: ignore[operator]
    parts = parts.scaled(scale)
    if "static_equal" in models:
        report["static_equal"] = {**static_row(rows["static_equal"]), "extra_epochs": config.joint_epochs}
    report["compare"] = [
        {**static_row(rows[f"compare:{where}"]), **described, "folder": where}
        for where, (_, described) in compare.items()
    ]
    static_ms = report["static"]["latency_ms_measured"]
    report["dynamic"] = [
        _gated_row({"threshold": t}, rows[f"t={t}"], rates[f"t={t}"], parts, static_ms, say) for t in thresholds
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
        report["dynamic"].append(_gated_row(searched, rows[key], rates[key], parts, static_ms, say))
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


def static_row(rows: list[tuple[int, int, float]]) -> dict[str, Any]:
    """Accuracy and mean latency of a model without gates, from its per-image rows.

    >>> static_row([(0, 1, 2.0), (0, 0, 4.0)])
    {'top1': 0.5, 'latency_ms_measured': 3.0, 'images': 2}
    """
    return {
        "top1": sum(r[1] for r in rows) / len(rows),
        "latency_ms_measured": sum(r[2] for r in rows) / len(rows),
        "images": len(rows),
    }


def _gated_row(
    setting: dict[str, Any],
    rows: list[tuple[int, int, float]],
    rates: dict[str, float],
    parts: DynamicParts,
    static_ms: float,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """A gated setting's report row: the setting, then its profile from the pass; said as it is made."""
    profile = profile_from_rows(rows, rates, parts)
    row = {**setting, **asdict(profile)}
    row["mean_exec_rate"] = sum(profile.exec_rate.values()) / len(profile.exec_rate)
    say(
        f"{'threshold ' if row.get('threshold') is not None else ''}{setting_label(row)}: top-1 {profile.top1:.4f}, "
        f"{profile.latency_ms_measured:.3f} ms measured ({profile.latency_ms_measured / static_ms:.3f} of static), "
        f"{profile.latency_ms_expected:.3f} ms expected"
    )
    return row
