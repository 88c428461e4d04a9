from __future__ import annotations

import json

import pytest

from scripts.cli import main


def test_pretrain_then_evaluate_json(tmp_path, capsys):
    out = tmp_path / "digits.pt"
    assert (
        main(
            [
                "pretrain",
                "--model",
                "small_cnn",
                "--data",
                "digits",
                "--epochs",
                "2",
                "--lr",
                "0.05",
                "--batch-size",
                "64",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out), "--data", "digits", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert {"top1", "n", "macs", "params"} <= record.keys()
    assert 0.5 < record["top1"] <= 1 and record["n"] == 359 and record["macs"] > record["params"] > 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["evaluate", "--checkpoint", "nowhere.pt"], "checkpoint nowhere.pt does not exist"),
        (["pretrain", "--model", "small_cnn", "--data", "imagefolder", "--out", "x.pt"], "needs --data-root"),
        (
            ["pretrain", "--model", "small_cnn", "--data", "imagefolder", "--data-root", "/no/such", "--out", "x.pt"],
            "data root /no/such does not exist",
        ),
        (["pretrain", "--model", "alexnet", "--out", "x.pt"], "model must be one of"),
        (["pretrain", "--model", "small_cnn", "--out", "x.pt", "--resume"], "nothing to resume"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_prune_evaluate_export(tmp_path, capsys):
    out = tmp_path / "pruned"
    assert (
        main(
            [
                "prune",
                "--checkpoint",
                "checkpoints/small_cnn_digits.pt",
                "--data",
                "digits",
                "--uniform",
                "0.3",
                "--criterion",
                "activation",
                "--finetune-epochs",
                "1",
                "--schedule",
                "constant",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "val_bn" in printed and "test_finetuned" in printed
    assert main(["evaluate", "--pruned", str(out), "--data", "digits", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    meta = json.loads((out / "meta.json").read_text())
    assert record["macs"] == meta["macs"] < meta["base_macs"]
    assert record["top1"] == pytest.approx(meta["accuracy"]["test_finetuned"])
    assert main(["export", "--pruned", str(out), "--out", str(tmp_path / "m.onnx"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["max_abs_diff_ort_vs_torch"] < 1e-4 and (tmp_path / "m.onnx").exists()


def test_prune_with_a_bad_plan_is_one_line(tmp_path, capsys):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"sparsity": {"stem.0": 1.5}}))
    assert (
        main(
            [
                "prune",
                "--checkpoint",
                "checkpoints/small_cnn_digits.pt",
                "--plan",
                str(plan),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "sparsity for stem.0 must be in [0, 0.95]; got 1.5" in capsys.readouterr().err
