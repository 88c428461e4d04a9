"""``--model-py`` on the command line: a user's own model trained, pruned, searched and reloaded, and a policy learned
on a CIFAR ResNet applied to grouped and depthwise models (issue 33). Digits and an analytic device: no timing."""

from __future__ import annotations

import json

import pytest

from hardware_models.registry import get_latency_model
from pruning_core.serialize import load_pruned
from scripts.cli import main
from tests.pruning_core.test_user_model import USER_MODEL

POLICY = "benchmarks/resnet56_cifar10/transfer_policy_resnet20"  # PPO on resnet20/CIFAR-10, budgets 0.45-0.85
TARGET = ["--data", "digits", "--device", "pixel-a76", "--budget", "0.6"]


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "my_models.py"
    path.write_text(USER_MODEL)
    return path


def pretrained(model_file, function, tmp_path, epochs="0"):
    """A checkpoint of the user's model on digits (0 epochs: random weights)."""
    out = tmp_path / f"{function}.pt"
    argv = ["pretrain", "--model-py", f"{model_file}:{function}", "--data", "digits", "--epochs", epochs]
    assert main([*argv, "--lr", "0.05", "--out", str(out)]) == 0
    return out


def kept_widths(folder):
    structure = json.loads((folder / "structure.json").read_text())
    return structure["base_model"], {name: len(kept) for name, kept in structure["kept_channels"].items()}


def test_prune_and_baseline_take_a_users_model_and_reload_it_when_named(model_file, tmp_path, capsys):
    checkpoint = pretrained(model_file, "grouped", tmp_path, epochs="1")
    named = ["--model-py", f"{model_file}:grouped", "--input-size", "1,8,8"]
    out = tmp_path / "pruned"
    assert main(["prune", *named, "--checkpoint", str(checkpoint), "--uniform", "0.5", "--out", str(out)]) == 0
    base, widths = kept_widths(out)
    assert base == f"py:{model_file.resolve()}:grouped"
    assert widths == {"stem.0": 16, "mid.0": 16, "head.0": 32}  # stem.0 feeds the 4 groups of mid.0, which stay equal
    capsys.readouterr()

    assert main(["evaluate", "--pruned", str(out), "--data", "digits"]) == 2  # the folder alone runs no code
    err = capsys.readouterr().err.strip()
    assert "runs only when named: pass --model-py" in err and len(err.splitlines()) == 1
    assert main(["evaluate", "--pruned", str(out), "--model-py", f"{model_file}:grouped", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["macs"] == json.loads((out / "meta.json").read_text())["macs"]
    onnx = tmp_path / "m.onnx"
    assert main(["export", "--pruned", str(out), "--model-py", f"{model_file}:grouped", "--out", str(onnx)]) == 0
    assert onnx.exists()

    baseline = tmp_path / "uniform"
    argv = ["baseline", "--method", "uniform-l1", *named, "--checkpoint", str(checkpoint), *TARGET]
    assert main([*argv, "--out", str(baseline)]) == 0
    report = json.loads((baseline / "report.json").read_text())
    assert report["budget_met"] and report["latency_ms_predicted"] <= 0.6 * report["dense_latency_ms_predicted"] * (
        1 + 1e-9
    )
    assert kept_widths(baseline)[1]["stem.0"] % 4 == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["baseline", "--method", "uniform-l1", "--model-py", "{file}:grouped", "--out", "x"], "expected a checkpoint"),
        (
            ["prune", "--model-py", "{file}:grouped", "--checkpoint", "{ckpt}", "--input-size", "3,32,32"],
            "input size must be the 1,8,8 of the digits images (only imagefolder data is resized to it); got 3,32,32",
        ),
        (["prune", "--model-py", "{file}:depthwise", "--checkpoint", "{ckpt}"], "--model is py:"),
        (["prune", "--checkpoint", "{ckpt}"], "runs only when named: pass --model-py"),
        (["pretrain", "--model-py", "{file}:not_a_model", "--out", "x.pt"], "to return a torch.nn.Module; got int"),
        (["pretrain", "--model-py", "{file}", "--out", "x.pt"], "expected a model file as path/to/file.py:function"),
    ],
)
def test_bad_user_model_input_is_one_line(model_file, tmp_path, capsys, monkeypatch, argv, message):
    checkpoint = pretrained(model_file, "grouped", tmp_path)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    argv = [a.format(file=model_file, ckpt=checkpoint) for a in argv]
    assert main([*argv, *(["--uniform", "0.5", "--out", "o"] if argv[0] == "prune" else [])]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize(("function", "slices"), [("grouped", 4), ("depthwise", 1)])
def test_a_cifar_resnet_policy_applies_to_grouped_and_depthwise_models(model_file, tmp_path, capsys, function, slices):
    checkpoint = pretrained(model_file, function, tmp_path)
    out = tmp_path / "applied"
    named = ["--model-py", f"{model_file}:{function}", "--checkpoint", str(checkpoint)]
    assert main(["apply", "--policy", POLICY, *named, *TARGET, "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "policy" and report["budget_met"]
    assert report["latency_ms_predicted"] <= 0.6 * report["dense_latency_ms_predicted"] * (1 + 1e-9)
    base, widths = kept_widths(out)
    assert base.endswith(f":{function}") and widths["stem.0"] % slices == 0  # stem.0 feeds mid.0's groups
    assert sum(widths.values()) < 32 + 32 + 64  # pruned
    # the widths the policy's environment priced are the widths the engine pruned
    pruned = load_pruned(out, run_code=base).model
    assert get_latency_model("pixel-a76").predict(pruned, (1, 8, 8)) == pytest.approx(report["latency_ms_predicted"])
    capsys.readouterr()
    assert main(["evaluate", "--pruned", str(out), "--model-py", f"{model_file}:{function}", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["macs"] == report["macs"]
