import json
import shutil

import pytest

from scripts.dynamic_report import main, pick_searched


def test_every_model_is_timed_in_one_interleaved_pass_and_a_rerun_resumes(tmp_path):
    out = tmp_path / "dyn"
    argv = [
        "--model", "small_cnn", "--data", "digits", "--device", "pixel-a76", "--uniform", "0.2",
        "--finetune-epochs", "1", "--gate-epochs", "1", "--joint-epochs", "1", "--thresholds", "0.6", "0.3",
        "--latency-images", "30", "--out", str(out),
    ]  # fmt: skip
    main(argv)
    report = json.loads((out / "report.json").read_text())
    assert report["timing"]["interleaved"] == ["static", "static_equal", "t=0.3", "t=0.6"]
    assert report["static"]["images"] == report["static_equal"]["images"] == 30
    low, high = report["dynamic"]
    assert (low["threshold"], high["threshold"]) == (0.3, 0.6)
    for row in (low, high):
        assert sum(r["images"] for r in row["by_blocks_used"].values()) == 30
        assert set(row["exec_rate"]) == {"block1", "block2"} and row["latency_ms_expected"] > 0
        used = sum(int(n) * r["images"] for n, r in row["by_blocks_used"].items()) / 30
        assert sum(row["exec_rate"].values()) == pytest.approx(used)  # the rates count the timed images, no more
    assert high["mean_exec_rate"] <= low["mean_exec_rate"]  # a higher threshold skips at least as often
    assert (out / "table.md").read_text().startswith("| model | threshold |")
    assert (out / "latency_accuracy.png").stat().st_size and (out / "exec_rates.png").stat().st_size

    saved = {p.name: p.stat().st_mtime_ns for p in (out / "gates.pt", out / "static_equal.pt")}
    main(argv)  # resumed: nothing trained or timed again
    assert json.loads((out / "report.json").read_text()) == report
    assert {p.name: p.stat().st_mtime_ns for p in (out / "gates.pt", out / "static_equal.pt")} == saved
    older = {**report, "timing": {**report["timing"], "method": 1}}
    (out / "report.json").write_text(json.dumps(older))
    main(argv)  # a report timed by an older method is timed again, and nothing is trained again
    again = json.loads((out / "report.json").read_text())
    assert again["timing"]["method"] == report["timing"]["method"] and "timed" in again["timing"]
    assert {p.name: p.stat().st_mtime_ns for p in (out / "gates.pt", out / "static_equal.pt")} == saved
    main([*argv, "--retime"])  # timed again on request; every earlier timing kept as it was, and listed
    retimed = json.loads((out / "report.json").read_text())
    timed = ("timing", "static", "static_equal", "compare", "dynamic")
    assert retimed["earlier_timings"] == [{k: older[k] for k in timed}, {k: again[k] for k in timed}]
    assert retimed["timing"]["timed"] >= again["timing"]["timed"]
    listed = (out / "table.md").read_text().split("Every timing of these models")[1]
    assert listed.count("\n| ") == 1 + 3  # the header, then the three passes
    main(argv)  # resumed: nothing timed again, nothing added
    assert json.loads((out / "report.json").read_text()) == retimed

    search = [*argv, "--search-thresholds", "2", "--search-levels", "0", "0.5", "1", "--search-images", "100"]
    main(search)  # thresholds per block searched on val, and the settings found timed in the same pass
    report = json.loads((out / "report.json").read_text())
    saved = json.loads((out / "threshold_search.json").read_text())
    assert saved["settings"] == {"levels": [0.0, 0.5, 1.0], "images": 100, "stop": 0.45}
    assert saved["parts"]["block_ms"].keys() == {"block1", "block2"}  # the last timing's parts price the search
    rows = [row for row in report["dynamic"] if row["threshold"] is None]
    assert [row["thresholds"] for row in rows] == [p["thresholds"] for p in pick_searched(saved["path"], 2)]
    assert [row["label"] for row in rows] == [f"per-block {i}" for i in range(1, len(rows) + 1)] and rows
    assert report["timing"]["interleaved"][-len(rows) :] == [f"search:{i}" for i in range(1, len(rows) + 1)]
    assert all(sum(r["images"] for r in row["by_blocks_used"].values()) == 30 for row in rows)
    assert "Per-block thresholds found by search on val" in (out / "table.md").read_text()
    main(search)  # resumed: the search reused, nothing timed again
    assert json.loads((out / "report.json").read_text()) == report
    with pytest.raises(SystemExit, match=r"other settings \(rate_penalty\)"):
        main([*argv, "--rate-penalty", "1.0"])

    # Another rate penalty in another folder that starts from this one's static models: only the gates are trained.
    other = tmp_path / "other"
    other.mkdir()
    shutil.copytree(out / "static", other / "static")
    shutil.copy(out / "static_equal.pt", other / "static_equal.pt")
    main([*argv[:-1], str(other), "--rate-penalty", "1.0", "--joint-full-weight", "1.0"])
    copied = json.loads((other / "report.json").read_text())
    assert copied["plan"] == report["plan"] and copied["accuracy"] == report["accuracy"]
    assert copied["static"]["top1"] == report["static"]["top1"]
    assert copied["gate_training"]["full_weight"] == 1.0 and report["gate_training"]["full_weight"] == 0.0
    assert "which passed each batch twice" in (other / "table.md").read_text()
    assert "which passed each batch twice" not in (out / "table.md").read_text()


def test_static_models_at_other_ratios_are_timed_in_the_same_pass(tmp_path):
    common = [
        "--model", "small_cnn", "--data", "digits", "--device", "pixel-a76", "--finetune-epochs", "1",
        "--gate-epochs", "1", "--joint-epochs", "1", "--latency-images", "20",
    ]  # fmt: skip
    harder = tmp_path / "u05"
    main([*common, "--uniform", "0.5", "--static-only", "--out", str(harder)])
    assert (harder / "static_equal.pt").exists() and not (harder / "gates.pt").exists()  # no gates trained

    out = tmp_path / "dyn"
    main([*common, "--uniform", "0.2", "--thresholds", "0.5", "--out", str(out), "--compare", str(harder)])
    report = json.loads((out / "report.json").read_text())
    assert report["timing"]["interleaved"] == ["static", "static_equal", f"compare:{harder}", "t=0.5"]
    (row,) = report["compare"]
    assert row["uniform"] == 0.5 and row["extra_epochs"] == 1 and row["images"] == 20
    assert row["macs_ratio"] < report["macs_ratio"]  # the harder plan
    table = (out / "table.md").read_text()
    assert "static only, uniform 0.5, +1 epochs" in table and "At equal accuracy" in table
    with pytest.raises(SystemExit, match="expected a report folder with a static model"):
        main([*common, "--uniform", "0.2", "--thresholds", "0.5", "--out", str(out), "--compare", str(tmp_path)])


def test_prunegym_dynamic_takes_the_report_arguments_and_refuses_bad_input_in_one_line(tmp_path, capsys):
    from scripts.cli import main as prunegym

    with pytest.raises(SystemExit) as exit_:
        prunegym(["dynamic", "--help"])
    assert exit_.value.code == 0
    shown = capsys.readouterr().out
    assert shown.startswith("usage: prunegym dynamic") and "--search-thresholds K" in shown and "--compare" in shown
    bad = ["dynamic", "--device", "pixel-a76", "--out", str(tmp_path / "dyn"), "--uniform", "0.2"]
    assert prunegym([*bad, "--plan", str(tmp_path / "plan.json")]) == 2
    assert prunegym([*bad, "--thresholds", "0.5", "1.5"]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert errors == [
        "prunegym dynamic: error: expected exactly one of a plan (JSON) or a uniform sparsity; got plan "
        f"{tmp_path / 'plan.json'} and uniform 0.2",
        "prunegym dynamic: error: expected one or more thresholds, each in [0, 1]; got [0.5, 1.5]",
    ]
    assert not (tmp_path / "dyn").exists()
    with pytest.raises(SystemExit) as exit_:  # the script says the same, after its usage
        main(bad[1:-2])
    assert exit_.value.code == 2
    assert (
        capsys.readouterr()
        .err.splitlines()[-1]
        .endswith("error: expected exactly one of a plan (JSON) or a uniform sparsity; got plan None and uniform None")
    )
