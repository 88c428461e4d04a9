"""The model zoo: CIFAR ResNets, VGG-BN, MobileNetV2, a small CNN for digits, torchvision and timm models, and a
user's own model from a Python file.

CIFAR ResNets follow He et al. (CVPR 2016, section 4.2): three stages of 16/32/64 channels and ``6n+2`` layers,
with 1x1 projection shortcuts where the shape changes (option B), which keeps every channel coupling visible to a
dependency graph. Blocks with an identity shortcut are the ones that layer pruning and dynamic skipping may remove.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pruning_core.errors import CheckpointError, UnsupportedModelError


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a shortcut; ``shortcut`` is ``nn.Identity`` when shapes match."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        if stride != 1 or in_planes != planes:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs with ``depth = 6n + 2``."""

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise UnsupportedModelError(f"CIFAR ResNet depth must be 6n+2; got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        layers: list[nn.Module] = []
        in_planes = 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # Zero-init the last BN of each residual branch (Goyal et al. 2017): each block starts as identity.
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def deepen_cifar_resnet(shallow: CifarResNet, deep: CifarResNet) -> CifarResNet:
    """Initialise a deeper CIFAR ResNet from a trained shallower one (Net2DeeperNet, Chen et al., ICLR 2016).

    The stem, the classifier and the ``n`` blocks of each stage of ``shallow`` are copied, in order, into evenly
    spaced blocks of each stage of ``deep`` (the first block of a stage, which changes the shape, always receives the
    first). Every other block of ``deep`` keeps its zero-initialised last BatchNorm, so it computes the identity and
    the deep model starts with exactly the shallow model's function; training then puts the new blocks to use.

    Args:
        shallow: The trained model to copy from.
        deep: A freshly built model with the same classes and at least as many blocks per stage (changed in place).

    Returns:
        ``deep``.

    Raises:
        UnsupportedModelError: ``deep`` has fewer blocks per stage or a different stem or classifier.
    """
    n_src, n_dst = len(list(shallow.layer1.children())), len(list(deep.layer1.children()))
    if n_dst < n_src:
        raise UnsupportedModelError(
            f"expected a deeper ResNet to initialise; got {n_dst} blocks per stage from {n_src}"
        )
    if shallow.fc.weight.shape != deep.fc.weight.shape or shallow.conv1.weight.shape != deep.conv1.weight.shape:
        raise UnsupportedModelError(
            f"expected the same stem and classifier; got fc {tuple(shallow.fc.weight.shape)} and "
            f"{tuple(deep.fc.weight.shape)}, stem {tuple(shallow.conv1.weight.shape)} and "
            f"{tuple(deep.conv1.weight.shape)}"
        )
    for name in ("conv1", "bn1", "fc"):
        getattr(deep, name).load_state_dict(getattr(shallow, name).state_dict())
    for stage in ("layer1", "layer2", "layer3"):
        dst = list(getattr(deep, stage).children())
        for j, block in enumerate(getattr(shallow, stage).children()):
            dst[j * n_dst // n_src].load_state_dict(block.state_dict())
    return deep


VGG_CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class CifarVGG(nn.Module):
    """VGG with BatchNorm for 32x32 inputs (the variant used by network slimming, Liu et al. 2017)."""

    def __init__(self, config: str, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in VGG_CONFIGS[config]:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                assert isinstance(item, int)
                layers += [nn.Conv2d(channels, item, 3, padding=1, bias=False), nn.BatchNorm2d(item), nn.ReLU(True)]
                channels = item
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expansion, 3x3 depthwise, 1x1 projection; identity shortcut when shapes match."""

    def __init__(self, in_planes: int, planes: int, expansion: int, stride: int) -> None:
        super().__init__()
        hidden = in_planes * expansion
        self.use_shortcut = stride == 1 and in_planes == planes
        self.conv = nn.Sequential(
            nn.Conv2d(in_planes, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, planes, 1, bias=False),
            nn.BatchNorm2d(planes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_shortcut else out


class CifarMobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018) for 32x32 inputs: stride 1 in the stem and the first two stages."""

    # (expansion, out_planes, num_blocks, stride)
    CONFIG = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6(True))
        blocks: list[nn.Module] = []
        in_planes = 32
        for expansion, planes, count, stride in self.CONFIG:
            for i in range(count):
                blocks.append(InvertedResidual(in_planes, planes, expansion, stride if i == 0 else 1))
                in_planes = planes
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Conv2d(in_planes, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6(True))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(torch.flatten(self.avgpool(x), 1))


class SmallCNN(nn.Module):
    """A small residual CNN for 8x8 digits: stem, one identity block, a strided conv, one identity block."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        # Wide enough that latency on a CPU is dominated by compute, not per-call overhead, so pruning shows.
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(True))
        self.block1 = BasicBlock(64, 64)
        self.down = nn.Sequential(nn.Conv2d(64, 128, 3, 2, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(True))
        self.block2 = BasicBlock(128, 128)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.down(self.block1(self.stem(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


ModelBuilder = Callable[[int, int], nn.Module]

MODELS: dict[str, ModelBuilder] = {
    "resnet20": lambda num_classes, in_channels: CifarResNet(20, num_classes, in_channels),
    "resnet32": lambda num_classes, in_channels: CifarResNet(32, num_classes, in_channels),
    "resnet56": lambda num_classes, in_channels: CifarResNet(56, num_classes, in_channels),
    "resnet110": lambda num_classes, in_channels: CifarResNet(110, num_classes, in_channels),
    "vgg11_bn": lambda num_classes, in_channels: CifarVGG("vgg11", num_classes, in_channels),
    "vgg16_bn": lambda num_classes, in_channels: CifarVGG("vgg16", num_classes, in_channels),
    "mobilenetv2": lambda num_classes, in_channels: CifarMobileNetV2(num_classes, in_channels),
    "small_cnn": lambda num_classes, in_channels: SmallCNN(num_classes, in_channels),
}
TORCHVISION_PREFIX = "tv:"
# torchvision families built for one input size, and the keyword that sets it (the others adapt to any size).
TORCHVISION_SIZED = {"vit_": "image_size"}
TIMM_PREFIX = "timm:"
USER_CODE_PREFIX = "py:"


def model_names() -> list[str]:
    """Names accepted by :func:`build_model` (plus ``tv:<torchvision name>``, ``timm:<timm name>`` and
    ``py:<file>:<function>``)."""
    return [*MODELS, f"{TORCHVISION_PREFIX}<name>", f"{TIMM_PREFIX}<name>", f"{USER_CODE_PREFIX}<file.py>:<function>"]


def default_input_shape(name: str, in_channels: int | None = None) -> tuple[int, int, int]:
    """The input shape (C, H, W) a model name is built for by default: 8x8 digits for ``small_cnn``, else 32x32
    colour images; ``in_channels`` overrides C.

    >>> default_input_shape("small_cnn"), default_input_shape("resnet56")
    ((1, 8, 8), (3, 32, 32))
    """
    channels, size = (1, 8) if name == "small_cnn" else (3, 32)
    return (channels if in_channels is None else in_channels, size, size)


def built_for_one_size(name: str) -> bool:
    """Whether a model name is built for one input size, set by ``image_size`` (torchvision's ViT, timm's models
    with a fixed input size such as ViT or CoAtNet); other models adapt to any size.

    >>> built_for_one_size("tv:vit_b_16"), built_for_one_size("tv:resnet18"), built_for_one_size("resnet20")
    (True, False, False)
    """
    if name.startswith(TORCHVISION_PREFIX):
        return any(name[len(TORCHVISION_PREFIX) :].startswith(prefix) for prefix in TORCHVISION_SIZED)
    if name.startswith(TIMM_PREFIX):
        try:
            import timm
        except ImportError:
            return False
        bare = name[len(TIMM_PREFIX) :].split(".")[0]
        return timm.is_model(bare) and bool(getattr(timm.models.get_pretrained_cfg(bare), "fixed_input_size", False))
    return False


def is_user_code(name: str) -> bool:
    """Whether a model name is a user's model file (``py:<file>:<function>``), which building runs.

    >>> is_user_code("py:/models/net.py:build"), is_user_code("tv:resnet18")
    (True, False)
    """
    return name.startswith(USER_CODE_PREFIX)


def model_slug(name: str) -> str:
    """A model name as one file-name component: ``:`` becomes ``_``; a user's model file becomes
    ``py_<file stem>_<function>_<hash of its path>``.

    >>> model_slug("tv:resnet18"), model_slug("py:/models/net.py:build")
    ('tv_resnet18', 'py_net_build_31b6d595')
    """
    if is_user_code(name):
        path, _, function = name.removeprefix(USER_CODE_PREFIX).rpartition(":")
        return f"py_{Path(path).stem}_{function}_{hashlib.sha1(path.encode()).hexdigest()[:8]}"
    return name.replace(":", "_").replace("/", "_")


def check_code_named(name: str, run_code: bool | str, source: str) -> None:
    """Refuse to rebuild ``source``'s model ``name`` when it is a user's model file the caller did not name.

    Args:
        name: The model name ``source`` records.
        run_code: True: any user code may run; a model name: only that one (what ``--model-py`` named); False: none.
        source: What records the name (a checkpoint, a folder), for the message.

    Raises:
        CheckpointError: ``name`` is user code and ``run_code`` does not allow it.

    >>> check_code_named("py:/m/net.py:build", "py:/m/net.py:build", "run.pt")
    >>> check_code_named("py:/m/net.py:build", False, "run.pt")
    Traceback (most recent call last):
    ...
    pruning_core.errors.CheckpointError: run.pt holds a model built by user code (/m/net.py:build), which runs only \
when named: pass --model-py /m/net.py:build (run_code=True in Python)
    """
    if not is_user_code(name) or run_code is True or run_code == name:
        return
    code = name.removeprefix(USER_CODE_PREFIX)
    if isinstance(run_code, str) and is_user_code(run_code):
        raise CheckpointError(
            f"{source} holds a model built by user code ({code}); --model-py names "
            f"{run_code.removeprefix(USER_CODE_PREFIX)}"
        )
    raise CheckpointError(
        f"{source} holds a model built by user code ({code}), which runs only when named: pass --model-py {code} "
        "(run_code=True in Python)"
    )


def user_model_spec(text: str) -> str:
    """The model name of a user's model function, ``py:<absolute path>:<function>``, from ``path/to/file.py:function``
    (the form of ``--model-py``; a leading ``py:`` is accepted too). The absolute path is what checkpoints and pruned
    folders record, so they rebuild the model from the same file wherever they are loaded from.

    >>> user_model_spec("/models/net.py:build")
    'py:/models/net.py:build'

    Raises:
        UnsupportedModelError: ``text`` is not ``<file>.py:<function>``.
    """
    path, sep, function = text.removeprefix(USER_CODE_PREFIX).rpartition(":")
    if not sep or not path.endswith(".py") or not function.isidentifier():
        raise UnsupportedModelError(f"expected a model file as path/to/file.py:function; got {text!r}")
    return f"{USER_CODE_PREFIX}{Path(path).expanduser().resolve()}:{function}"


def _user_error(path: Path, exc: BaseException) -> str:
    """``Type: message (line N)`` of an error the user's file raised, with the deepest line of that file."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename) == path]
    return f"{type(exc).__name__}: {text}" + (f" (line {lines[-1]})" if lines else "")


def build_user_model(
    spec: str, *, num_classes: int = 10, in_channels: int = 3, image_size: int | None = None
) -> nn.Module:
    """Run a user's model function and return its model. THIS RUNS THE USER'S CODE: the file is executed as a module
    and the function called, so only name files you trust.

    The function is called with those of ``num_classes``, ``in_channels`` and ``image_size`` that its signature takes
    (by name, or all of them with ``**kwargs``); a function that takes none builds its model as it likes.

    Args:
        spec: ``py:<file>:<function>`` (see :func:`user_model_spec`) or ``<file>:<function>``.
        num_classes: Outputs of the classifier, for a function that takes it.
        in_channels: Channels of the input images, for a function that takes it.
        image_size: Side of the square input images (None: not passed).

    Raises:
        UnsupportedModelError: The file or the function is missing, running them raises, or the function returns
            something other than an ``nn.Module`` (one line each).
    """
    name = user_model_spec(spec)
    path_text, _, function = name.removeprefix(USER_CODE_PREFIX).rpartition(":")
    path = Path(path_text)
    if not path.is_file():
        raise UnsupportedModelError(f"model file {path} does not exist")
    module_name = f"prunegym_user_model_{hashlib.sha1(str(path).encode()).hexdigest()[:12]}"
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise UnsupportedModelError(f"cannot import model file {path}")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = module  # classes defined there resolve by module name (deepcopy, dataclasses)
    try:
        loader_spec.loader.exec_module(module)
    except Exception as exc:  # the user's code: any error, said in one line
        del sys.modules[module_name]
        raise UnsupportedModelError(f"running model file {path} failed: {_user_error(path, exc)}") from exc
    builder = getattr(module, function, None)
    if not callable(builder):
        raise UnsupportedModelError(f"model file {path} has no function {function!r}")
    given: dict[str, Any] = {"num_classes": num_classes, "in_channels": in_channels}
    if image_size is not None:
        given["image_size"] = image_size
    try:
        params = inspect.signature(builder).parameters
    except (TypeError, ValueError):  # a builtin or C callable: call it bare
        params = {}  # type: ignore[assignment]
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in given.items() if takes_all or k in params}
    try:
        model = builder(**kwargs)
    except Exception as exc:  # the user's code
        raise UnsupportedModelError(f"{function}() in {path} failed: {_user_error(path, exc)}") from exc
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(
            f"expected {function}() in {path} to return a torch.nn.Module; got {type(model).__name__}"
        )
    return model


def build_timm_model(
    name: str, *, num_classes: int = 10, in_channels: int = 3, image_size: int | None = None
) -> nn.Module:
    """A timm model (``timm.create_model(name, pretrained=False)``: no weights are downloaded).

    Args:
        name: A timm model name (``timm.list_models()``), without the ``timm:`` prefix.
        num_classes: Outputs of the classifier.
        in_channels: Channels of the input images.
        image_size: Side of the square input, passed to the models timm builds for one input size (ViT, CoAtNet);
            the others adapt to any size and ignore it.

    Raises:
        UnsupportedModelError: timm is not installed, or it has no model ``name``.
    """
    try:
        import timm
    except ImportError:
        raise UnsupportedModelError(
            f"timm:{name} needs the timm package, which is not installed: pip install 'prunegym[timm]'"
        ) from None
    if not timm.is_model(name):
        raise UnsupportedModelError(f"expected a timm model name (see timm.list_models()); got {name!r}")
    sized: dict[str, Any] = {}
    if image_size is not None and built_for_one_size(f"{TIMM_PREFIX}{name}"):
        sized["img_size"] = image_size
    return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **sized)


def build_model(name: str, *, num_classes: int = 10, in_channels: int = 3, image_size: int | None = None) -> nn.Module:
    """Build an untrained model by name.

    Args:
        name: A zoo name (``resnet56``, ``vgg16_bn``, ``mobilenetv2``, ``small_cnn``, ...), ``tv:<name>`` for any
            torchvision classification model, ``timm:<name>`` for a timm model (both built without pretrained
            weights; timm is an optional dependency), or ``py:<file>:<function>`` for a user's own model function,
            WHICH RUNS THAT FILE'S CODE (:func:`build_user_model`).
        num_classes: Outputs of the classifier.
        in_channels: Channels of the input images (torchvision models need 3).
        image_size: Side of the square input images, for models built for one size (ViT: positional embeddings);
            None builds them for their default size. Other models ignore it.

    Raises:
        UnsupportedModelError: The name is unknown (or see :func:`build_timm_model`, :func:`build_user_model`).

    >>> build_model("resnet20").fc.out_features
    10
    """
    if name.startswith(TORCHVISION_PREFIX):
        import torchvision

        tv_name = name[len(TORCHVISION_PREFIX) :]
        available = torchvision.models.list_models(module=torchvision.models)
        if tv_name not in available:
            raise UnsupportedModelError(f"expected a torchvision classification model name; got {tv_name!r}")
        if in_channels != 3:
            raise UnsupportedModelError(f"torchvision models expect 3 input channels; got {in_channels}")
        sized = {
            keyword: image_size
            for prefix, keyword in TORCHVISION_SIZED.items()
            if tv_name.startswith(prefix) and image_size is not None
        }
        return torchvision.models.get_model(tv_name, weights=None, num_classes=num_classes, **sized)
    if name.startswith(TIMM_PREFIX):
        return build_timm_model(
            name[len(TIMM_PREFIX) :], num_classes=num_classes, in_channels=in_channels, image_size=image_size
        )
    if is_user_code(name):
        return build_user_model(name, num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    if name not in MODELS:
        raise UnsupportedModelError(f"model must be one of {', '.join(model_names())}; got {name!r}")
    return MODELS[name](num_classes, in_channels)
