"""Architecture registry. Every model takes float images in [0, 1] and normalises them itself,
so a saved or MLflow-logged model needs nothing from the data stage to run."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from fairprune import tensorfile

ARCHITECTURES: dict[str, Callable[[int, int, int], nn.Module]] = {}


def register(name: str):
    def wrap(fn):
        ARCHITECTURES[name] = fn
        return fn
    return wrap


@register("small_cnn")
def small_cnn(in_channels: int, size: int, num_classes: int) -> nn.Module:
    """Tran et al.'s Table 2 network: two conv layers and three linear layers."""
    pooled = size // 4
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * pooled * pooled, 256), nn.ReLU(inplace=True),
        nn.Linear(256, 128), nn.ReLU(inplace=True),
        nn.Linear(128, num_classes),
    )


def _small_image_resnet(layers: list[int], in_channels: int, num_classes: int) -> nn.Module:
    # torchvision imported here, not at the top: importing it costs every stage ~2 s (it loads all of
    # torchvision.models and torch._dynamo), and the default small CNN does not need it
    from torchvision.models.resnet import BasicBlock, ResNet

    net = ResNet(BasicBlock, layers, num_classes=num_classes)
    # CIFAR-style stem: a 3x3 stride-1 conv and no max-pool keep spatial detail of 32 px inputs.
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


@register("resnet10")
def resnet10(in_channels: int, size: int, num_classes: int) -> nn.Module:
    return _small_image_resnet([1, 1, 1, 1], in_channels, num_classes)


@register("resnet18")
def resnet18(in_channels: int, size: int, num_classes: int) -> nn.Module:
    return _small_image_resnet([2, 2, 2, 2], in_channels, num_classes)


@register("mobilenet_v2")
def mobilenet(in_channels: int, size: int, num_classes: int) -> nn.Module:
    from torchvision.models import mobilenet_v2

    net = mobilenet_v2(num_classes=num_classes)
    first = net.features[0][0]
    stride = 1 if size <= 64 else 2
    net.features[0][0] = nn.Conv2d(in_channels, first.out_channels, 3, stride=stride, padding=1, bias=False)
    return net


class Classifier(nn.Module):
    """An architecture behind a fixed input normalisation."""

    def __init__(self, arch: str, input_shape: tuple[int, int, int], num_classes: int,
                 mean: list[float], std: list[float]):
        super().__init__()
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture '{arch}'; known: {', '.join(ARCHITECTURES)}")
        self.arch, self.input_shape, self.num_classes = arch, tuple(input_shape), num_classes
        channels, size, _ = self.input_shape
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.net = ARCHITECTURES[arch](channels, size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)

    def spec(self) -> dict:
        return {"arch": self.arch, "input_shape": list(self.input_shape), "num_classes": self.num_classes,
                "mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist()}


def output_layer(model: nn.Module) -> nn.Linear:
    """The classifier (the last Linear layer): never pruned structurally (that would remove classes)."""
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def build(arch: str, data) -> Classifier:
    """A fresh model for a PreparedData's input shape and classes."""
    return Classifier(arch, data.input_shape, data.num_classes, data.mean, data.std)


STRUCTURE_ATTRS = {  # what Torch-Pruning changes when it removes channels, per layer type
    nn.Conv2d: ("in_channels", "out_channels", "groups"),
    nn.Linear: ("in_features", "out_features"),
    nn.modules.batchnorm._BatchNorm: ("num_features",),
}


def _structure(model: nn.Module) -> dict[str, dict[str, int]]:
    """The channel counts of every layer whose count pruning can change, by module name."""
    out = {}
    for name, module in model.named_modules():
        for kind, attrs in STRUCTURE_ATTRS.items():
            if isinstance(module, kind):
                out[name] = {a: int(getattr(module, a)) for a in attrs}
    return out


def _rebuild(spec: dict, structure: dict[str, dict[str, int]], state: dict[str, torch.Tensor]) -> Classifier:
    """The architecture of `spec`, with every layer resized to the saved (possibly pruned) shapes."""
    model = Classifier(spec["arch"], tuple(spec["input_shape"]), spec["num_classes"], spec["mean"], spec["std"])
    modules = dict(model.named_modules())
    for name, attrs in structure.items():
        module = modules[name]
        for attr, value in attrs.items():
            setattr(module, attr, value)
    for key, tensor in state.items():
        owner, _, leaf = key.rpartition(".")
        module = modules[owner]
        if leaf in module._parameters and module._parameters[leaf] is not None:
            module._parameters[leaf] = nn.Parameter(torch.empty_like(tensor))
        elif leaf in module._buffers and module._buffers[leaf] is not None:
            module._buffers[leaf] = torch.empty_like(tensor)
    model.load_state_dict(state)
    return model


VOLATILE_SUFFIXES = ("_s", "_ms")  # wall times, latencies: differ on every run with identical weights
VOLATILE_KEYS = {"speedup", "mlflow_model_id", "mlflow_run_id"}


def reproducible(value):
    """`value` without the keys that change from run to run when the weights do not (timings, latencies,
    MLflow ids): DVC hashes model files, so a retrain with identical weights must give identical bytes."""
    if isinstance(value, dict):
        return {k: reproducible(v) for k, v in value.items()
                if not (isinstance(k, str) and (k.endswith(VOLATILE_SUFFIXES) or k in VOLATILE_KEYS))}
    if isinstance(value, list):
        return [reproducible(v) for v in value]
    return value


def save(model: nn.Module, path: str | Path, **extra) -> None:
    """Save tensors and plain values only: the architecture spec, each layer's channel counts (so
    physically pruned models reload with their shapes), the state dict and `extra` (plain values,
    timings and run ids left out: `reproducible`). Pruning masks must be folded in first (make_permanent)."""
    payload = {"format": 2, "spec": model.spec(), "structure": _structure(model),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, **reproducible(extra)}
    tensorfile.save(payload, path)


def load(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[Classifier, dict]:
    payload = tensorfile.load(path, map_location, rerun="the stage that writes it (dvc repro)")
    if not isinstance(payload, dict) or payload.get("format") != 2:
        raise tensorfile.UnsafeFile(f"{path} is not a fairprune model file (format 2); delete it and rerun the "
                                    f"stage that writes it (dvc repro)")
    model = _rebuild(payload.pop("spec"), payload.pop("structure"), payload.pop("state_dict"))
    payload.pop("format")
    return model, payload
