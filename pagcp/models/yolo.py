"""YOLOv5 detection model: the Detect head, the yaml parser and the Model that runs the layer list."""

from __future__ import annotations

import ast
import copy
import math
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from pagcp.errors import ConfigError
from pagcp.models.blocks import C3, SPP, SPPF, Bottleneck, Concat, Conv, Focus

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

#: Modules a model yaml may name (upstream spellings).
MODULES: dict[str, type[nn.Module]] = {
    "Conv": Conv,
    "Bottleneck": Bottleneck,
    "C3": C3,
    "SPP": SPP,
    "SPPF": SPPF,
    "Focus": Focus,
    "Concat": Concat,
    "nn.Upsample": nn.Upsample,
    "Upsample": nn.Upsample,
    "nn.BatchNorm2d": nn.BatchNorm2d,
}
_WIDTH_MODULES = (Conv, Bottleneck, C3, SPP, SPPF, Focus)


class Detect(nn.Module):
    """Detection head: a 1x1 conv per level; raw maps in training, decoded boxes in eval mode."""

    def __init__(self, nc: int = 80, anchors: Any = (), ch: list[int] | tuple[int, ...] = ()):
        super().__init__()
        self.nc = nc
        self.no = nc + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        # pixels at construction; Model divides by the strides once they are known (grid units afterwards)
        self.register_buffer("anchors", torch.tensor(anchors, dtype=torch.float32).view(self.nl, -1, 2))
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in ch)
        self.stride = torch.ones(self.nl)
        self._grids: dict[tuple[int, int, int, torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def _grid(self, nx: int, ny: int, i: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (i, nx, ny, like.device, like.dtype)
        cached = self._grids.get(key)
        if cached is None:
            yv, xv = torch.meshgrid(
                torch.arange(ny, device=like.device, dtype=like.dtype),
                torch.arange(nx, device=like.device, dtype=like.dtype),
                indexing="ij",
            )
            grid = torch.stack((xv, yv), 2).view(1, 1, ny, nx, 2)
            anchor_px = (self.anchors[i] * self.stride[i]).to(like).view(1, self.na, 1, 1, 2)
            cached = (grid, anchor_px)
            self._grids[key] = cached
        return cached

    def forward(self, xs: list[torch.Tensor]):
        raw: list[torch.Tensor] = []
        decoded: list[torch.Tensor] = []
        for i in range(self.nl):
            p = self.m[i](xs[i])
            bs, _, ny, nx = p.shape
            p = p.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            raw.append(p)
            if not self.training:
                grid, anchor_px = self._grid(nx, ny, i, p)
                s = p.sigmoid()
                xy = (s[..., :2] * 2 - 0.5 + grid) * self.stride[i]
                wh = (s[..., 2:4] * 2) ** 2 * anchor_px
                decoded.append(torch.cat((xy, wh, s[..., 4:]), -1).view(bs, -1, self.no))
        if self.training:
            return raw
        return torch.cat(decoded, 1), raw

    def _apply(self, fn, *args, **kwargs):
        # keep the plain-attribute stride on the model's device/dtype and drop cached grids
        super()._apply(fn, *args, **kwargs)
        self.stride = fn(self.stride)
        self._grids = {}
        return self

    def __setstate__(self, state):  # grids are a cache, never part of the state
        super().__setstate__(state)
        self._grids = {}


MODULES["Detect"] = Detect


def _resolve_arg(a: Any, nc: int, anchors: Any) -> Any:
    if not isinstance(a, str):
        return a
    if a == "nc":
        return nc
    if a == "anchors":
        return anchors
    try:
        return ast.literal_eval(a)
    except (ValueError, SyntaxError):
        return a  # e.g. 'nearest'


def parse_model(d: dict, ch: int = 3, source: str = "<dict>") -> tuple[nn.Sequential, list[int], list[int]]:
    """Build the layer list of a YOLOv5 yaml dict; returns (layers, save indices, output widths)."""
    for key in ("nc", "depth_multiple", "width_multiple", "anchors", "backbone", "head"):
        if key not in d:
            raise ConfigError(f"{source}: model yaml has no '{key}' key")
    nc, gd, gw, anchors = d["nc"], d["depth_multiple"], d["width_multiple"], d["anchors"]
    divisor = d.get("channel_multiple", 8)
    na = len(anchors[0]) // 2 if isinstance(anchors, list) else int(anchors)
    no = na * (nc + 5)
    widths: list[int] = [ch]
    layers: list[nn.Module] = []
    save: list[int] = []
    for i, row in enumerate(d["backbone"] + d["head"]):
        if not isinstance(row, (list, tuple)) or len(row) != 4:
            raise ConfigError(f"{source}: layer {i}: expected [from, number, module, args], got {row!r}")
        f, n, name, args = row
        cls = MODULES.get(name) if isinstance(name, str) else None
        if cls is None:
            raise ConfigError(
                f"{source}: layer {i}: unknown module {name!r}; known modules: {', '.join(sorted(MODULES))}"
            )
        args = [_resolve_arg(a, nc, anchors) for a in args]
        n = max(round(n * gd), 1) if n > 1 else n
        prev = [widths[-1] if j == -1 else widths[j + 1] for j in ([f] if isinstance(f, int) else f)]
        try:
            if cls in _WIDTH_MODULES:
                c1, c2 = prev[0], args[0]
                if c2 != no:
                    c2 = math.ceil(c2 * gw / divisor) * divisor
                args = [c1, c2, *args[1:]]
                if cls is C3:
                    args.insert(2, n)
                    n = 1
            elif cls is nn.BatchNorm2d:
                c2 = prev[0]
                args = [c2]
            elif cls is Concat:
                c2 = sum(prev)
            elif cls is Detect:
                args.append(prev)
                if isinstance(args[1], int):
                    args[1] = [list(range(args[1] * 2))] * len(f)
                c2 = prev[0]
            else:
                c2 = prev[0]
            module = nn.Sequential(*(cls(*args) for _ in range(n))) if n > 1 else cls(*args)
        except (TypeError, ValueError, IndexError) as e:
            raise ConfigError(f"{source}: layer {i} ({name} {args}): {e}") from e
        module.i, module.f, module.type = i, f, name
        module.np = sum(p.numel() for p in module.parameters())
        save.extend(x % i for x in ([f] if isinstance(f, int) else f) if x != -1)
        layers.append(module)
        widths.append(c2)
    return nn.Sequential(*layers), sorted(set(save)), widths[1:]


def config_path(name: str) -> Path:
    """Path of a bundled model yaml by name ('yolov5s', 'yolov5m-v5')."""
    return CONFIG_DIR / f"{Path(name).stem}.yaml"


def bundled_configs() -> list[str]:
    """Names of the bundled model configs."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def read_config(cfg: str | Path | dict) -> tuple[dict, str]:
    """Load a model yaml (path, bundled name or dict) -> (dict, source description)."""
    if isinstance(cfg, dict):
        return copy.deepcopy(cfg), "<dict>"
    path = Path(cfg)
    if not path.exists() and config_path(str(cfg)).exists() and path.suffix in ("", ".yaml", ".yml"):
        path = config_path(str(cfg))
    if not path.exists():
        raise ConfigError(f"{cfg}: model yaml not found; bundled configs: {', '.join(bundled_configs())}")
    try:
        d = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid yaml: {e}") from e
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: a model yaml must be a mapping")
    d.setdefault("yaml_file", path.name)
    return d, str(path)


class Model(nn.Module):
    """A YOLOv5 detector built from a yaml config (bundled name, path or dict)."""

    def __init__(self, cfg: str | Path | dict = "yolov5s", ch: int = 3, nc: int | None = None):
        super().__init__()
        self.yaml, source = read_config(cfg)
        ch = self.yaml.setdefault("ch", ch)
        if nc is not None and nc != self.yaml["nc"]:
            self.yaml["nc"] = nc
        self.model, self.save, _ = parse_model(copy.deepcopy(self.yaml), ch=ch, source=source)
        self.nc = self.yaml["nc"]
        self.names = [str(i) for i in range(self.nc)]
        detect = self.model[-1]
        if not isinstance(detect, Detect):
            raise ConfigError(f"{source}: the last layer must be Detect, got {type(detect).__name__}")
        s = 256
        with torch.no_grad():
            outs = self.forward(torch.zeros(1, ch, s, s))
        detect.stride = torch.tensor([s / o.shape[-3] for o in outs])
        detect.anchors /= detect.stride.view(-1, 1, 1)
        self._init_biases()

    @property
    def head(self) -> Detect:
        """The Detect head (the last layer)."""
        return self.model[-1]

    @property
    def stride(self) -> torch.Tensor:
        return self.model[-1].stride

    def _init_biases(self) -> None:
        detect = self.model[-1]
        with torch.no_grad():
            for conv, s in zip(detect.m, detect.stride.tolist()):
                b = conv.bias.view(detect.na, -1)
                b[:, 4] += math.log(8 / (640 / s) ** 2)
                b[:, 5:] += math.log(0.6 / (detect.nc - 0.99))

    def forward(self, x: torch.Tensor):
        outputs: list[torch.Tensor | None] = []
        for m in self.model:
            if m.f != -1:
                x = outputs[m.f] if isinstance(m.f, int) else [x if j == -1 else outputs[j] for j in m.f]
            x = m(x)
            outputs.append(x if m.i in self.save else None)
        return x
