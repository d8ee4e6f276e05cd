"""A third model family in one module: a two-head ResNet-18 classifier on synthetic shapes.

It shows that adding a model family to pagcp is this one module plus ``pagcp.families.register(TwoHeadFamily())``:
no library file names it, yet ``pagcp.pipeline.prune_run`` searches, slices, fine-tunes, validates and reports
it like the YOLO families. Everything a run needs is here:

- the model, :class:`TwoHeadNet`: a torchvision ResNet-18 trunk at a quarter of its width (so that a CPU runs
  it in seconds at 32 px) feeding two linear heads, ``shape`` (square, circle, triangle) and ``color`` (red,
  green, blue); forward returns both logits, and torch.fx traces it as it is (no leaves, no head matcher);
- the data, made in-process and deterministically: ``--data shapes`` (or ``shapes:train=N,val=M``) names 32x32
  images of one filled shape on noise; an item ``shapes/<split>/<index>`` seeds its own image, so any item
  list is rebuilt exactly, and train and val items never coincide;
- the weights: ``twohead-resnet18`` is a seeded net trained for a few epochs on the default data when first
  loaded (standing in for a shipped checkpoint), and checkpoints are plain dicts read with
  ``torch.load(weights_only=True)``, pruned widths restored by :func:`pagcp.models.checkpoint.fit_widths`
  (convs, norms and the heads' inputs);
- the oracle's tasks (cross-entropy of each head), validation (accuracy of each head) and fine-tuning (Adam on
  the train split, the module it is given, so pruned widths stay).
"""

from __future__ import annotations

import functools
import zlib
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from pagcp.engine.oracle import Batch, TaskLoss
from pagcp.errors import CheckpointError, ConfigError
from pagcp.families import Family, FinetuneJob
from pagcp.models.checkpoint import fit_widths, torch_save_atomic
from pagcp.runs import write_json_atomic

SHAPES = ("square", "circle", "triangle")
COLORS = ("red", "green", "blue")
RGB = torch.tensor([[0.9, 0.15, 0.15], [0.15, 0.8, 0.2], [0.2, 0.25, 0.9]])
#: the side of every generated image (another ``img`` resizes them)
SIDE = 32
#: the trunk's width as a fraction of ResNet-18's (64, 128, 256, 512 channels -> 16, 32, 64, 128)
WIDTH = 0.25
BUNDLED = "twohead-resnet18"
FORMAT = "pagcp-twohead"
DEFAULT_SPLITS = {"train": 384, "val": 128}
PRETRAIN = {"epochs": 10, "batch": 32, "lr": 3e-3, "seed": 0}
FINETUNE_LR = 5e-4
VAL_BATCH = 64


# -- the model ------------------------------------------------------------------------------------
def narrow(module: nn.Module, width: float) -> None:
    """Scale every conv and norm of ``module`` to ``width`` of its channels (the RGB input stays), in place:
    fit_widths builds the new modules from a state dict's shapes, so empty tensors of those shapes do."""
    shapes = {}
    for name, m in module.named_modules():
        if isinstance(m, nn.Conv2d):
            c_in = m.in_channels if m.in_channels == 3 else int(m.in_channels * width)
            shapes[f"{name}.weight"] = torch.empty(int(m.out_channels * width), c_in, *m.kernel_size)
        elif isinstance(m, nn.BatchNorm2d):
            shapes[f"{name}.weight"] = torch.empty(int(m.num_features * width))
    fit_widths(module, shapes)


class TwoHeadNet(nn.Module):
    """A quarter-width torchvision ResNet-18 trunk and two linear heads; forward -> (shape logits, color logits)."""

    def __init__(self, shapes: int = len(SHAPES), colors: int = len(COLORS)):
        super().__init__()
        self.trunk = torchvision.models.resnet18()
        self.trunk.fc = nn.Identity()
        narrow(self.trunk, WIDTH)
        features = self.trunk.layer4[-1].conv2.out_channels
        self.shape_head = nn.Linear(features, shapes)
        self.color_head = nn.Linear(features, colors)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.trunk(x)
        return self.shape_head(f), self.color_head(f)


def heads(model: TwoHeadNet) -> dict[str, int]:
    """The class count of each head (what a checkpoint records to rebuild the model)."""
    return {"shapes": model.shape_head.out_features, "colors": model.color_head.out_features}


# -- the data -------------------------------------------------------------------------------------
def parse_data(spec: str) -> dict[str, int]:
    """Split sizes of ``shapes`` or ``shapes:train=N,val=M``; ConfigError for anything else."""
    name, _, options = str(spec).partition(":")
    if name != "shapes":
        raise ConfigError(f"--data {spec}: the twohead family's data is 'shapes' or 'shapes:train=N,val=M'")
    splits = dict(DEFAULT_SPLITS)
    for option in filter(None, options.split(",")):
        key, _, value = option.partition("=")
        if key not in splits or not value.isdigit():
            raise ConfigError(f"--data {spec}: {option!r} is not train=N or val=N")
        splits[key] = int(value)
    return splits


@functools.cache
def sample(item: str) -> tuple[torch.Tensor, int, int]:
    """The image (3x32x32 in [0, 1]), shape and colour of an item, from a generator seeded by its name."""
    g = torch.Generator().manual_seed(zlib.crc32(item.encode()))
    shape, color = (int(torch.randint(len(names), (), generator=g)) for names in (SHAPES, COLORS))
    r = int(torch.randint(8, 13, (), generator=g))
    cx, cy = (int(torch.randint(r + 1, SIDE - r - 1, (), generator=g)) for _ in range(2))
    y, x = torch.meshgrid(torch.arange(SIDE), torch.arange(SIDE), indexing="ij")
    if shape == 0:
        mask = ((x - cx).abs() <= r) & ((y - cy).abs() <= r)
    elif shape == 1:
        mask = (x - cx) ** 2 + (y - cy) ** 2 <= r * r
    else:  # apex up, base 2r wide
        mask = ((y - cy).abs() <= r) & (2 * (x - cx).abs() <= y - cy + r)
    image = torch.rand(3, SIDE, SIDE, generator=g) * 0.3
    tint = (RGB[color] + 0.1 * (torch.rand(3, generator=g) - 0.5)).clamp(0, 1)
    image[:, mask] = tint[:, None]
    return image, shape, color


def tensors(items: list[str], img: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, img, img) and targets (N, 2: shape, colour) of ``items``."""
    samples = [sample(i) for i in items]
    images = torch.stack([s[0] for s in samples])
    if img != SIDE:
        images = F.interpolate(images, size=(img, img), mode="bilinear", align_corners=False)
    return images, torch.tensor([[s[1], s[2]] for s in samples], dtype=torch.long)


def task_losses(outputs: tuple[torch.Tensor, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each head (batch means), in :attr:`TwoHeadFamily.tasks` order."""
    return torch.stack([F.cross_entropy(o, targets[:, t]) for t, o in enumerate(outputs)])


def fit(
    model: nn.Module, items: list[str], img: int, epochs: int, batch: int, lr: float, seed: int
) -> list[list[float]]:
    """Adam on ``items`` for ``epochs``, learning rate ``lr`` decaying linearly to 0, shuffled by a generator seeded
    with ``seed``: the module given, trained in place; returns each epoch's mean task losses."""
    images, targets = tensors(items, img)
    device = next(model.parameters()).device
    images, targets = images.to(device), targets.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * -(-len(items) // batch)
    decay = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)  # linear to 0: settled weights
    g = torch.Generator().manual_seed(seed)
    history = []
    model.train()
    for _ in range(epochs):
        sums, seen = torch.zeros(2, dtype=torch.float64), 0
        for index in torch.randperm(len(items), generator=g).split(batch):
            losses = task_losses(model(images[index]), targets[index])
            optimizer.zero_grad()
            losses.sum().backward()
            optimizer.step()
            decay.step()
            sums += losses.detach().double().cpu() * len(index)
            seen += len(index)
        history.append((sums / seen).tolist())
    return history


@functools.lru_cache(maxsize=1)
def pretrained_state() -> dict[str, torch.Tensor]:
    """The weights of ``twohead-resnet18``: a net seeded 0, trained on the default train split (once a process)."""
    with torch.random.fork_rng(devices=[]):  # the caller's random state stays as it was
        torch.manual_seed(PRETRAIN["seed"])
        model = TwoHeadNet()
    items = TwoHeadFamily().split_items({"train": DEFAULT_SPLITS["train"]}, "train")
    fit(model, items, SIDE, PRETRAIN["epochs"], PRETRAIN["batch"], PRETRAIN["lr"], PRETRAIN["seed"])
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def read_checkpoint(path: Path) -> dict[str, Any] | None:
    """This family's checkpoint dict at ``path`` (read with weights_only, nothing else unpickled); None for any
    other file."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a torch file, or one that needs more than weights_only allows: not ours
        return None
    return ckpt if isinstance(ckpt, dict) and ckpt.get("format") == FORMAT else None


# -- the family -----------------------------------------------------------------------------------
class TwoHeadFamily(Family):
    """Two-head shape/colour classifiers (see the module docstring)."""

    name = "twohead"
    title = "two-head ResNet-18"
    checkpoint_format = "plain dict: format, heads, state_dict, meta; torch.load(weights_only=True)"
    tasks = ("shape", "color")
    metrics = ("shape_acc", "color_acc")
    primary_metric = "shape_acc"

    def bundled(self) -> list[str]:
        return [BUNDLED]

    def recognises_weights(self, spec: str) -> bool:
        """Its bundled name, or a file this family saved (YOLOv5 claims every other .pt path)."""
        path = Path(str(spec))
        return str(spec) == BUNDLED or (path.is_file() and read_checkpoint(path) is not None)

    def is_config(self, spec: str) -> bool:
        return False  # twohead-resnet18 is trained weights (made on first use), never a fresh net

    def recognises_model(self, model: nn.Module) -> bool:
        return isinstance(model, TwoHeadNet)

    def load(self, spec: str | Path, nc: int | None = None, device: str | torch.device = "cpu") -> TwoHeadNet:
        if str(spec) == BUNDLED:
            classes, state = {"shapes": len(SHAPES), "colors": len(COLORS)}, pretrained_state()
        else:
            ckpt = read_checkpoint(Path(spec)) if Path(spec).is_file() else None
            if ckpt is None:
                raise CheckpointError(f"{spec}: not a {self.title} checkpoint ({self.checkpoint_format})")
            classes, state = ckpt["heads"], ckpt["state_dict"]
        if nc is not None and nc != classes["shapes"]:
            raise CheckpointError(f"{spec} predicts {classes['shapes']} shapes, not nc={nc}")
        with torch.random.fork_rng(devices=[]):  # its initial weights are replaced: leave the caller's RNG be
            model = TwoHeadNet(classes["shapes"], classes["colors"])
        fit_widths(model, state)
        model.load_state_dict(state)
        return model.to(device).float().eval()

    def save(self, model: nn.Module, path: Path, **meta: Any) -> Path:
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        torch_save_atomic({"format": FORMAT, "version": 1, "heads": heads(model), "state_dict": state, "meta": meta},
                          Path(path))  # fmt: skip
        return Path(path)

    def class_count(self, model: nn.Module) -> int:
        return model.shape_head.out_features

    def data_config(self, spec: str) -> dict[str, Any]:
        return {"nc": len(SHAPES), "names": list(SHAPES), "colors": list(COLORS), "spec": str(spec),
                **parse_data(spec)}  # fmt: skip

    def split_items(self, cfg: dict[str, Any], split: str) -> list[str]:
        if not cfg.get(split):
            raise ConfigError(f"--data {cfg.get('spec', 'shapes')}: no '{split}' split")
        return [f"shapes/{split}/{i:05d}" for i in range(int(cfg[split]))]

    def check_data(self, model: nn.Module, cfg: dict[str, Any], weights: str, data: str) -> None:
        super().check_data(model, cfg, weights, data)
        if model.color_head.out_features != len(cfg["colors"]):
            raise ConfigError(f"--data {data} has {len(cfg['colors'])} colours but --weights {weights} predicts "
                              f"{model.color_head.out_features}")  # fmt: skip

    def task_loss(self, model: nn.Module, img_size: int) -> TaskLoss:
        return task_losses

    def oracle_batches(self, model: nn.Module, items: list[str], img: int, batch: int, device: torch.device,
                       workers: int) -> list[Batch]:  # fmt: skip
        images, targets = tensors(items, img)
        return [(x.to(device), t.to(device)) for x, t in zip(images.split(batch), targets.split(batch))]

    def validate(self, model: nn.Module, cfg: dict[str, Any], img: int, device: torch.device, workers: int = 0,
                 progress: bool = True) -> dict[str, float]:  # fmt: skip
        """Accuracy of each head on the val split."""
        images, targets = tensors(self.split_items(cfg, "val"), img)
        correct = torch.zeros(2, dtype=torch.long)
        model.eval()
        with torch.no_grad():
            for x, t in zip(images.split(VAL_BATCH), targets.split(VAL_BATCH)):
                outputs = model(x.to(device))
                correct += torch.stack([(o.argmax(1).cpu() == t[:, i]).sum() for i, o in enumerate(outputs)])
        return {m: float(c) / len(targets) for m, c in zip(self.metrics, correct.tolist())}

    def finetune(self, model: nn.Module, job: FinetuneJob) -> nn.Module:
        """``job.epochs`` of Adam on the train split (batch ``job.batch``; ``job.hyp`` names YOLO hyps and is not
        read), training the pruned module itself; each epoch's losses go to ``finetune/results.json``."""
        items = self.split_items(self.data_config(job.data), "train")
        history = fit(model, items, job.img, job.epochs, job.batch, FINETUNE_LR, seed=1)
        folder = job.folder / "finetune"
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(folder / "results.json", {"source": str(job.source), "tasks": list(self.tasks),
                                                    "epoch_losses": history})  # fmt: skip
        return model.eval()
