"""Export of pruned models: ONNX (checked, compared with PyTorch) and INT8 static quantization with ONNX Runtime.

The reference article's edge recipe is "prune, then INT8": static quantization calibrated on training images.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pruning_core.data import ImageDataset
from pruning_core.engine import make_permanent
from pruning_core.errors import PruneGymError

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


@dataclass(frozen=True)
class ExportReport:
    """What an export wrote and how closely ONNX Runtime reproduces PyTorch."""

    path: Path
    bytes: int
    max_abs_diff: float
    """Largest |ONNX Runtime - PyTorch| over the check inputs."""


def export_onnx(
    model: nn.Module,
    input_shape: tuple[int, ...],
    path: str | os.PathLike[str],
    *,
    opset: int = 18,
    check_batch: int = 8,
    seed: int = 0,
) -> ExportReport:
    """Export ``model`` to ONNX with a dynamic batch axis, check it, and compare ONNX Runtime with PyTorch.

    Args:
        model: The model; unstructured-pruning masks are folded into its weights (in place).
        input_shape: ``(C, H, W)`` of one input.
        path: File to write.
        opset: ONNX opset.
        check_batch: Random inputs used for the comparison.
        seed: Seed of those inputs.
    """
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = make_permanent(model).eval()
    example = torch.zeros(2, *input_shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (example,),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamo=True,
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            verbose=False,
        )
    if program is None:
        raise PruneGymError("ONNX export returned no program")
    program.save(str(path))
    onnx.checker.check_model(str(path))
    inputs = torch.randn(check_batch, *input_shape, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        expected = model(inputs).numpy()
    got = run_onnx(path, inputs.numpy())
    return ExportReport(path, path.stat().st_size, float(np.abs(got - expected).max()))


def ort_session(path: str | os.PathLike[str], *, threads: int = 1) -> Any:
    """An ONNX Runtime CPU session with an explicit thread count."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(path: str | os.PathLike[str], inputs: np.ndarray, *, threads: int = 1) -> np.ndarray:
    """Outputs of an ONNX model on ``inputs`` (float32, NCHW)."""
    session = ort_session(path, threads=threads)
    return session.run(None, {session.get_inputs()[0].name: inputs.astype(np.float32)})[0]


def onnx_top1(
    path: str | os.PathLike[str],
    dataset: ImageDataset,
    split: str = "test",
    *,
    batch_size: int = 250,
    limit: int | None = None,
) -> float:
    """Top-1 accuracy of an ONNX model on a split, run by ONNX Runtime."""
    session = ort_session(path)
    name = session.get_inputs()[0].name
    correct = seen = 0
    for images, labels in dataset.batches(split, batch_size, limit=limit):
        logits = session.run(None, {name: images.numpy()})[0]
        correct += int((logits.argmax(1) == labels.numpy()).sum())
        seen += len(labels)
    return correct / max(seen, 1)


def quantize_int8(
    onnx_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    dataset: ImageDataset,
    *,
    calibration_images: int = 512,
    batch_size: int = 64,
) -> Path:
    """INT8 static quantization (QDQ, per-channel weights) calibrated on training images.

    Args:
        onnx_path: A float ONNX model written by :func:`export_onnx`.
        out_path: File to write.
        dataset: Source of the calibration images (its ``train`` split, no augmentation).
        calibration_images: Images the activation ranges are estimated on.
        batch_size: Images per calibration batch.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            generator = torch.Generator().manual_seed(0)
            self._batches = iter(
                [
                    {INPUT_NAME: x.numpy()}
                    for x, _ in dataset.batches(
                        "train", batch_size, shuffle=True, limit=calibration_images, generator=generator
                    )
                ]
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(out_path),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
        )
    return out_path
