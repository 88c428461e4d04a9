from __future__ import annotations

import copy
import json
import math
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from hardware_models import DeviceKind, LatencyModel, Variant, get_latency_model, list_devices
from hardware_models.analytic import PROFILES, AnalyticLatency
from hardware_models.lut import (
    TABLE_BLOCKS,
    TABLE_FIT_WEIGHTS,
    LayerTable,
    LookupTable,
    build_lut,
    choose_block,
    choose_table_fit,
    fit_calibration,
    fit_layer_grid,
    leave_one_out_error,
    profile_units,
    random_variant,
    validate,
)
from hardware_models.measure import OrtLatency, TorchLatency, build_variant, interleaved_rounds
from pruning_core.errors import PruneGymError
from pruning_core.graph import ModelGraph
from pruning_core.metrics import count_cost
from pruning_core.models import build_model


@pytest.fixture(scope="module")
def small_graph() -> ModelGraph:
    torch.manual_seed(0)
    return ModelGraph(build_model("small_cnn", in_channels=1), (1, 8, 8))


@pytest.fixture(scope="module")
def resnet_graph() -> ModelGraph:
    torch.manual_seed(0)
    return ModelGraph(build_model("resnet20"), (3, 32, 32))


def test_rounds_are_timed_in_a_fresh_worker_unless_the_models_cannot_go_there(resnet_graph):
    measurer = TorchLatency("cpu", threads=1, runs=5)
    slim = build_variant(resnet_graph, Variant(kept={g.name: max(1, g.channels // 4) for g in resnet_graph.groups}))
    rounds = interleaved_rounds(measurer, [resnet_graph.model, slim], (3, 32, 32), rounds=3)
    assert rounds.in_worker and len(rounds.stats) == 3 and all(len(r) == 2 and r[0].threads == 1 for r in rounds.stats)
    assert sorted(p.p50_ms < d.p50_ms for d, p in rounds.stats)[1]  # the slim model is faster in most rounds
    slim.unpicklable = lambda: None  # a lambda cannot be pickled: timed here, with a warning
    with pytest.warns(UserWarning, match="timing in this process"):
        here = interleaved_rounds(measurer, [resnet_graph.model, slim], (3, 32, 32), rounds=2)
    assert not here.in_worker and len(here.stats) == 2
    with pytest.raises(PruneGymError, match="timing worker could not time the models: RuntimeError"):
        interleaved_rounds(measurer, [torch.nn.Linear(5, 5)], (3, 32, 32), rounds=1)  # fails in the worker: said here
    assert interleaved_rounds(measurer, [resnet_graph.model], (3, 32, 32), rounds=1).in_worker  # the worker carries on


def test_the_timing_worker_starts_without_a_warning_and_ends_with_its_input():
    # importing hardware_models must not import the worker's module, which ``python -m`` then runs again as __main__
    done = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-m", "hardware_models.timing_worker"],
        input=b"",
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert done.stdout == b""  # no reply without a request


@pytest.mark.parametrize(
    "runtime_model",
    [TorchLatency("cpu", threads=1, runs=20), OrtLatency(threads=1, runs=20)],
    ids=["pytorch", "onnxruntime"],
)
def test_measured_latency_sees_pruning(runtime_model, resnet_graph):
    assert isinstance(runtime_model, LatencyModel) and runtime_model.kind is DeviceKind.MEASURED
    dense = runtime_model.measure(resnet_graph.model, (3, 32, 32))
    assert dense.runs >= 20 and dense.threads == 1 and dense.p90_ms >= dense.p50_ms >= dense.min_ms > 0
    # timed in turn (the host's speed drifts by tens of percent between separate measurements), a model with a
    # quarter of the channels is faster than the dense one measured alongside it
    slim = build_variant(resnet_graph, Variant(kept={g.name: max(1, g.channels // 4) for g in resnet_graph.groups}))
    together = runtime_model.measure_interleaved([resnet_graph.model, slim], (3, 32, 32))
    assert [s.runs for s in together] == [20, 20] and together[1].p50_ms < together[0].p50_ms

    # small models are timed for a minimum time too when taking turns: 3 calls of each would be over in milliseconds
    runtime_model.runs, runtime_model.min_seconds = 3, 0.2
    try:
        long_enough = runtime_model.measure_interleaved([slim, slim], (3, 32, 32))
    finally:
        runtime_model.runs, runtime_model.min_seconds = 20, 0.0
    assert long_enough[0].runs == long_enough[1].runs and long_enough[0].runs * long_enough[0].mean_ms * 2 >= 150


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_latency(resnet_graph):
    stats = TorchLatency("cuda", runs=20).measure(build_model("resnet20"), (3, 32, 32))
    assert stats.device == "cuda" and stats.p50_ms > 0


def test_cuda_is_refused_without_a_gpu(small_graph):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(PruneGymError, match="needs a CUDA GPU"):
        TorchLatency("cuda")
    with pytest.raises(PruneGymError, match="needs a CUDA GPU"):
        build_lut(small_graph, device="cuda", progress=False)


def test_lut_build_refuses_a_device_it_cannot_time(small_graph):
    with pytest.raises(PruneGymError, match="device must be one of host-cpu, host-cpu-ort, cuda; got 'jetson'"):
        build_lut(small_graph, device="jetson", progress=False)
    with pytest.raises(PruneGymError, match="calibration_variants must be >= 2; got 1"):
        build_lut(small_graph, device="host-cpu", calibration_variants=1, progress=False)
    with pytest.raises(PruneGymError, match="sweeps and calibration_runs must be >= 1; got 5 and 0"):
        build_lut(small_graph, device="host-cpu", calibration_runs=0, progress=False)


def test_lut_keeps_measured_grids_and_loads_a_version_1_table(small_graph, tmp_path):
    table = LayerTable(
        "conv", 3, 1, (8, 8), (8, 8), [8, 16], [8, 16], [[1.0, 2.0], [2.0, 4.0]], [[1.1, 2.0], [2.0, 4.0]]
    )
    lut = LookupTable(device="host-cpu", runtime="pytorch", threads=1, batch_size=1, tables={"t": table})
    lut.save(tmp_path / "v2.json")
    assert LookupTable.load(tmp_path / "v2.json").tables["t"].measured_ms == [[1.1, 2.0], [2.0, 4.0]]
    old = json.loads((tmp_path / "v2.json").read_text())
    old["schema_version"] = 1
    del old["tables"]["t"]["measured_ms"]
    (tmp_path / "v1.json").write_text(json.dumps(old))
    loaded = LookupTable.load(tmp_path / "v1.json")
    assert loaded.tables["t"].measured_ms is None and loaded.tables["t"].lookup(16, 16) == 4.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_lut_build_on_cuda(small_graph):
    lut = build_lut(small_graph, device="cuda", grid_points=3, calibration_variants=3, progress=False)
    assert lut.runtime == "pytorch" and lut.threads is None and lut.meta["gpu"]
    dense = lut.predict_variant(small_graph, Variant())
    slim = lut.predict_variant(small_graph, Variant(kept={g.name: 1 for g in small_graph.groups}))
    assert 0 < slim <= dense


def test_variant_widths_match_the_description(resnet_graph):
    variant = Variant(kept={"conv1": 5, "layer2.0.conv1": 7}, removed_blocks=("layer3.1",))
    model = build_variant(resnet_graph, variant)
    assert model.conv1.out_channels == 5 and model.layer2[0].conv1.out_channels == 7
    assert isinstance(model.layer3[1], torch.nn.Identity)
    channels = resnet_graph.layer_channels(dict(variant.kept), variant.removed_blocks)
    assert channels["layer1.0.conv1"] == (5, 16) and "layer3.1.conv1" not in channels


def test_a_grouped_variant_keeps_equal_slices_of_every_grouped_conv():
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, padding=1, groups=4), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 10),
    )  # fmt: skip
    graph = ModelGraph(net, (3, 8, 8))
    grouped = [g for g in graph.groups if g.channel_groups == 4]
    assert grouped, "the stem's channels feed a 4-group conv"
    model = build_variant(graph, Variant(kept={g.name: g.channels // 2 for g in grouped}))
    assert model[3].in_channels == 8 and model(torch.randn(1, 3, 8, 8)).shape == (1, 10)


def test_layer_table_interpolates_between_grid_points():
    table = LayerTable("conv", 3, 1, (8, 8), (8, 8), [1, 2], [1, 3], [[1.0, 3.0], [2.0, 4.0]])
    assert table.lookup(1, 1) == 1.0 and table.lookup(2, 3) == 4.0
    assert table.lookup(1.5, 2) == pytest.approx(2.5)
    assert table.lookup(10, 10) == 4.0  # clamped at the grid's end


@pytest.mark.parametrize("runtime", ["pytorch", "onnxruntime"])
def test_profile_units_times_every_unit_in_sweeps(runtime):
    units = [(torch.nn.Conv2d(c, c, 3, padding=1), (c, 32, 32)) for c in (4, 64)]
    calls = []
    thin, wide = profile_units(
        units, runtime=runtime, threads=1, batch_size=1, sweeps=2, progress=lambda: calls.append(1)
    )
    assert len(calls) == 4 and 0 < thin < wide  # 256 times the multiply-adds
    with pytest.raises(PruneGymError, match="runtime must be pytorch or onnxruntime; got 'tvm'"):
        profile_units(units, runtime="tvm", threads=1, batch_size=1)


def test_lut_build_save_load_predict(small_graph, tmp_path):
    lut = build_lut(
        small_graph, device="host-cpu", grid_points=3, calibration_variants=3, progress=False, model_name="small_cnn"
    )
    assert lut.meta["entries"] > 10 and len(lut.calibration) == 5  # dense, thinnest, three random variants
    assert set(lut.meta["table_fit"]["leave_one_out_rel_rmse"]) == {str(w) for w in TABLE_FIT_WEIGHTS}
    assert set(lut.meta["block_fit"]["leave_one_out_rel_rmse"]) == {str(b) for b in TABLE_BLOCKS}
    assert lut.granule % lut.block == 0 and lut.granule % lut.meta["profiled_granule"] == 0
    lut.save(tmp_path / "lut.json")
    loaded = get_latency_model(f"lut:{tmp_path / 'lut.json'}")
    assert isinstance(loaded, LookupTable) and loaded.kind is DeviceKind.LOOKUP_TABLE
    assert loaded.threads == 1 and loaded.runtime == "pytorch" and "torch" in loaded.meta["versions"]
    dense = loaded.predict_variant(small_graph, Variant())
    slim = loaded.predict_variant(small_graph, Variant(kept={g.name: 1 for g in small_graph.groups}))
    assert dense == pytest.approx(lut.predict_variant(small_graph, Variant())) and 0 < slim < dense
    with pytest.raises(PruneGymError, match="lacks layer"):
        loaded.predict(build_model("resnet20"), (3, 32, 32))
    with pytest.raises(PruneGymError, match="batch size 1; got 4"):
        loaded.predict_variant(small_graph, Variant(), batch_size=4)


def test_fit_layer_grid_smooths_a_noisy_measurement_and_keeps_it():
    ins, outs = [8, 16, 24, 32], [8, 16, 24, 32]
    exact = [[0.1 + 0.001 * i * o + 0.002 * o for o in outs] for i in ins]
    noisy = [row[:] for row in exact]
    noisy[2][1] *= 1.5  # one slow spell while one grid point was timed
    table = LayerTable("conv", 3, 1, (8, 8), (8, 8), ins, outs, noisy)
    fitted = np.array(fit_layer_grid(table))
    assert abs(fitted[2][1] - exact[2][1]) < 0.5 * abs(noisy[2][1] - exact[2][1])
    table.measured_ms, table.latency_ms = noisy, fitted.tolist()
    np.testing.assert_allclose(fit_layer_grid(table), fitted)  # always fitted to the measurement
    dw = LayerTable("dwconv", 3, 1, (8, 8), (8, 8), outs, outs, [[0.1, 0.2, 0.3, 0.4]])
    np.testing.assert_allclose(fit_layer_grid(dw), [[0.1, 0.2, 0.3, 0.4]])
    column = LayerTable("conv", 3, 1, (8, 8), (8, 8), ins, [10], [[0.1], [0.2], [0.3], [0.4]])
    np.testing.assert_allclose(fit_layer_grid(column), [[0.1], [0.2], [0.3], [0.4]])


def test_fit_layer_grid_never_makes_a_thinner_layer_slower():
    # launch-bound: flat until the work outgrows the launch, then linear (as on a GPU at batch 1); an unbounded fit
    # of this grid slopes down along c_out for narrow inputs
    ins, outs = [8, 16, 32, 64, 128], [8, 16, 32, 64, 128]
    grid = [[max(0.05, 2e-5 * i * o) for o in outs] for i in ins]
    fitted = np.array(fit_layer_grid(LayerTable("conv", 3, 1, (8, 8), (8, 8), ins, outs, grid)))
    assert (np.diff(fitted, axis=0) >= -1e-12).all() and (np.diff(fitted, axis=1) >= -1e-12).all()


def test_choose_table_fit_prefers_the_fit_where_single_measurements_are_noisy(small_graph):
    rng = random.Random(0)
    lut = build_lut(small_graph, device="host-cpu", grid_points=4, calibration_variants=2, progress=False)
    exact = {}
    for signature, table in lut.tables.items():  # a smooth truth, and a table that measured it with noise
        ins, outs = np.meshgrid(table.in_counts, table.out_counts, indexing="ij")
        exact[signature] = (0.01 + 1e-4 * ins * outs + 1e-3 * outs)[: len(table.latency_ms)]
        table.latency_ms = (exact[signature] * np.exp(np.random.default_rng(1).normal(0, 0.3, ins.shape))).tolist()
        table.measured_ms = None
    variants = [Variant(), *(random_variant(small_graph, rng, granule=lut.granule) for _ in range(15))]
    truth = LookupTable(device="d", runtime="pytorch", threads=1, batch_size=1, tables=copy.deepcopy(lut.tables))
    for signature, table in truth.tables.items():
        table.latency_ms = exact[signature].tolist()
    measured = np.array([truth.raw_sum(small_graph, v) for v in variants]) + 0.1
    weight, errors = choose_table_fit(lut, small_graph, variants, measured)
    assert weight == 1.0 and errors[1.0] < errors[0.0]
    assert all(t.measured_ms is not None for t in lut.tables.values())  # the measurement is kept beside the fit


def test_choose_block_finds_kernels_that_compute_channels_in_blocks_of_16(small_graph, tmp_path):
    rng = random.Random(0)
    lut = build_lut(small_graph, device="host-cpu", grid_points=8, calibration_variants=2, progress=False)
    # the table as profiled, reading widths as they are (the build's own choice of block depends on this host's timing)
    lut.block, lut.granule = 1, lut.meta["profiled_granule"]
    for table in lut.tables.values():  # smooth in width: the grid's own values, made exact
        ins, outs = np.meshgrid(table.in_counts, table.out_counts, indexing="ij")
        table.latency_ms = (0.01 + 1e-4 * ins * outs + 1e-3 * outs)[: len(table.latency_ms)].tolist()
        table.measured_ms = None
    blocked = copy.deepcopy(lut)
    blocked.block = 16  # the truth: a width costs what the next multiple of 16 costs
    variants = [Variant(), *(random_variant(small_graph, rng, granule=lut.granule) for _ in range(15))]
    wide = [n for n, r in small_graph.layers.items() if n in small_graph.out_group and r.out_channels >= 32]
    name = wide[0]
    c_in = small_graph.layers[name].in_channels
    assert blocked.layer_cost(small_graph, name, c_in, 24) == blocked.layer_cost(small_graph, name, c_in, 32)
    assert lut.layer_cost(small_graph, name, c_in, 24) < lut.layer_cost(small_graph, name, c_in, 32)
    measured = np.array([blocked.raw_sum(small_graph, v) for v in variants]) + 0.1
    block, errors = choose_block(lut, small_graph, variants, measured)
    assert block == 16 and errors[16] < 1e-6 < errors[1] and lut.block == 1  # chosen, not set
    blocked.save(tmp_path / "blocked.json")
    assert LookupTable.load(tmp_path / "blocked.json").block == 16


def test_leave_one_out_error_prefers_the_sums_that_predict_whole_models():
    rng = np.random.default_rng(0)
    true = np.linspace(2.0, 6.0, 12)
    measured = 1.2 * true + 0.3
    assert leave_one_out_error(true, measured) < 1e-9
    assert leave_one_out_error(true * rng.uniform(0.9, 1.1, 12), measured) > 0.01
    with pytest.raises(PruneGymError, match="at least 4 calibration models"):
        leave_one_out_error(true[:3], measured[:3])


def test_fit_calibration_follows_a_concave_curve_and_refuses_a_decreasing_one():
    sums = np.linspace(2.0, 6.0, 12)
    concave = -0.05 * sums**2 + 1.9 * sums + 0.3  # what whole models measured here look like against layer sums
    curvature, scale, overhead = fit_calibration(sums, concave)
    assert (curvature, scale, overhead) == pytest.approx((-0.05, 1.9, 0.3), abs=1e-6)
    # a fit that would turn down inside the range is refused (a thinner model must never be predicted slower)
    curvature, scale, _ = fit_calibration(sums, 6.0 - (sums - 4.0) ** 2)
    assert curvature == 0.0 and scale > 0
    # a negative intercept is kept while every calibrated model stays positive
    assert fit_calibration(sums[:4], 1.5 * sums[:4] - 1.0) == pytest.approx((0.0, 1.5, -1.0), abs=1e-6)
    with pytest.raises(PruneGymError, match="expected as many sums as measurements"):
        fit_calibration(sums, concave[:3])


def test_lut_combine_applies_the_quadratic_calibration(tmp_path):
    table = LookupTable(
        device="d", runtime="pytorch", threads=1, batch_size=1, tables={}, scale=2.0, overhead_ms=0.5, curvature=-0.1
    )
    assert table.combine(3.0) == pytest.approx(-0.9 + 6.0 + 0.5)
    table.save(tmp_path / "t.json")
    assert LookupTable.load(tmp_path / "t.json").combine(3.0) == pytest.approx(5.6)
    # calibrated on sums 2..4: beyond them the calibration goes on as its tangent, not as the bending quadratic
    sums = np.array([2.0, 2.5, 3.0, 3.5, 4.0, 2.2])
    table.calibrate(sums, -0.1 * sums**2 + 2.0 * sums + 0.5)
    assert table.combine(3.0) == pytest.approx(5.6, abs=1e-6)
    slope_low, slope_high = -0.2 * 2.0 + 2.0, -0.2 * 4.0 + 2.0
    assert table.combine(1.0) == pytest.approx(table.combine(2.0) - slope_low, abs=1e-6)
    assert table.combine(1.0) > -0.1 + 2.0 + 0.5  # the quadratic would fall away faster
    assert table.combine(5.0) == pytest.approx(table.combine(4.0) + slope_high, abs=1e-6)
    table.save(tmp_path / "t.json")
    assert LookupTable.load(tmp_path / "t.json").combine(1.0) == pytest.approx(table.combine(1.0))


def test_validate_reports_lut_and_macs(small_graph):
    def fake_measure(model):  # latency proportional to MACs: the MACs proxy must be exact, a constant must not
        return count_cost(model, small_graph.input_shape).macs / 1e6

    def channels(variant):
        return sum(variant.kept.get(g.name, g.channels) for g in small_graph.groups)

    def macs(variant):
        return count_cost(build_variant(small_graph, variant), small_graph.input_shape).macs

    report = validate(
        channels,
        small_graph,
        lambda models: [fake_measure(m) for m in models],
        samples=6,
        rounds=2,
        others={"channels": channels, "macs": macs},
        progress=False,
    )
    assert report.others["channels"] == pytest.approx(
        {k: report.relative[k] for k in ("mape", "within_10pct", "spearman")}
    )
    assert report.others["macs"] == pytest.approx({"mape": 0.0, "within_10pct": 1.0, "spearman": 1.0}, abs=1e-9)
    assert report.macs_mape == pytest.approx(0.0, abs=1e-9) and report.macs_within_10pct == 1.0
    assert report.relative["macs_mape"] == pytest.approx(0.0, abs=1e-9) and report.relative["macs_spearman"] == 1.0
    assert report.samples == 6 and report.mape > 0.05
    assert report.repeatability["mape"] == 0.0 and report.repeatability["within_10pct"] == 1.0  # a noiseless host


def test_validate_compares_half_the_passes_with_the_other_half(small_graph):
    calls = []

    def drifting(models):  # the host slows every variant by 10% after the first two passes over 5 variants
        calls.append(1)
        factor = 1.0 if len(calls) <= 2 * 5 else 1.1
        return [
            count_cost(m, small_graph.input_shape).macs / 1e6 * (1.0 if i == 0 else factor)
            for i, m in enumerate(models)
        ]

    report = validate(lambda v: 1.0, small_graph, drifting, samples=5, rounds=4, progress=False)
    halves = report.repeatability
    assert halves["halves_mape"] == pytest.approx(0.1 / 1.1) and halves["halves_spearman"] == pytest.approx(1.0)
    assert math.isnan(report.spearman)  # a constant prediction ranks nothing


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_analytic_profiles_are_monotone_and_labelled(name, resnet_graph):
    model = get_latency_model(name)
    assert model.kind is DeviceKind.ANALYTIC and "estimate" in model.runtime
    rng = random.Random(0)
    dense = model.predict_variant(resnet_graph, Variant())
    for _ in range(5):
        assert model.predict_variant(resnet_graph, random_variant(resnet_graph, rng)) <= dense
    assert PROFILES[name].source


def test_int8_and_sparse_help_where_the_device_has_them(resnet_graph):
    orin = PROFILES["jetson-orin-nano"]
    fp32 = AnalyticLatency(orin).predict_variant(resnet_graph, Variant())
    assert AnalyticLatency(orin, precision="int8").predict_variant(resnet_graph, Variant()) < fp32
    xavier = PROFILES["jetson-agx-xavier"]
    dense = AnalyticLatency(xavier).predict_variant(resnet_graph, Variant())
    assert AnalyticLatency(xavier, sparse_2_4=True).predict_variant(resnet_graph, Variant()) == dense
    with pytest.raises(PruneGymError, match="weights need"):
        AnalyticLatency(PROFILES["stm32h747"]).check_fits(10_000_000)  # 40 MB of fp32 weights, 2 MB of flash


def test_registry():
    names = {e.name for e in list_devices()}
    assert {
        "host-cpu",
        "host-cpu-ort",
        "cuda",
        "i7-10700k",
        "jetson-agx-xavier",
        "jetson-orin-nano",
        "pixel-a76",
        "stm32h747",
    } <= names
    with pytest.raises(PruneGymError, match=r"device must be one of .*; got 'tpu'"):
        get_latency_model("tpu")
    with pytest.raises(PruneGymError, match="no such file"):
        get_latency_model("lut:/no/such.json")
