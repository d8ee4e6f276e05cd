"""A model family from outside the library: one module (tests/twohead_family.py) and one ``register`` call.

The two-head ResNet-18 classifier family is not YOLO-shaped in any way (no strides, no head leaf, two
classification tasks, synthetic data, its own checkpoint format); these tests prove the registry routes its
names, files and models to it, and that ``pagcp.pipeline.prune_run`` runs it end to end: the search prunes
channels, the pruned checkpoint is exactly the searched network, fine-tuning keeps its widths and recovers
accuracy, and the report holds the family's own metrics.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from twohead_family import BUNDLED, TwoHeadFamily, TwoHeadNet, tensors

import pagcp
from pagcp.engine.settings import PruneSettings
from pagcp.errors import CheckpointError, ConfigError
from pagcp.families import family_for_weights, family_of, register, unregister
from pagcp.graph import Keep
from pagcp.models.checkpoint import WEIGHTS_DIR
from pagcp.pipeline import ExecutionSettings, FinetuneSettings, OracleSettings, RunSettings, prune_run

IMG = 32
DATA = "shapes:train=384,val=128"
#: a fifth of the multiply-adds must go: several rounds, enough to cost accuracy that fine-tuning wins back
TARGET = 0.7
SUBSET = 64


@pytest.fixture
def family():
    """The family registered for one test (and gone after it, whatever the test did)."""
    registered = register(TwoHeadFamily())
    yield registered
    unregister(registered.name)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """One whole prune run of the bundled two-head net (registered only while it runs)."""
    registered = register(TwoHeadFamily())
    try:
        return prune_run(
            RunSettings(
                weights=BUNDLED,
                search=PruneSettings(initial_rate=0.6, initial_thres=6.0, target_gflops=TARGET),
                oracle=OracleSettings(data=DATA, img=IMG, batch=32, subset=SUBSET),
                finetune=FinetuneSettings(epochs=1, batch=32),
                execution=ExecutionSettings(device="cpu", latency=False),
                project=str(tmp_path_factory.mktemp("runs")),
            )
        )
    finally:
        unregister(registered.name)


def val_batch(family: TwoHeadFamily, n: int = 32) -> torch.Tensor:
    """The first ``n`` val images (never seen by the search or any training)."""
    return tensors(family.split_items(family.data_config(DATA), "val")[:n], IMG)[0]


def test_registry_routes_the_new_family(family, tmp_path):
    """Registered, the family owns its name, its files and its models, and only those; unregistered, it is gone."""
    path = family.save(TwoHeadNet(), tmp_path / "net.pt")
    assert family_for_weights(BUNDLED) is family
    assert family_for_weights(path) is family
    assert family_of(TwoHeadNet()) is family
    assert family_for_weights(WEIGHTS_DIR / "yolov5n-demo.pt").name == "yolov5"  # a pagcp YOLOv5 file stays YOLO's
    assert family_for_weights(tmp_path / "missing.pt").name == "yolov5"  # claims only files it can read
    assert family.recognises_weights(str(tmp_path / "net.yaml")) is False
    unregister(family.name)
    with pytest.raises(CheckpointError, match=BUNDLED):
        family_for_weights(BUNDLED)
    with pytest.raises(ConfigError, match="TwoHeadNet"):
        family_of(TwoHeadNet())
    assert family_for_weights(path).name != "twohead"


def test_sliced_checkpoint_round_trips(family, tmp_path):
    """A net sliced by hand (trunk output group, hence the heads' inputs, too) saves and loads through the
    registry into the family's class with the sliced widths and outputs."""
    model = TwoHeadNet().eval()
    graph = family.trace(model, torch.zeros(1, 3, IMG, IMG))
    keep = graph.full_keep()
    group = next(u.name for u in graph.units if "layer4.0.conv2" in u.name)
    keep[group][::2] = False
    keep["trunk.layer3.1.conv1"][:40] = False
    small = family.sliced(graph.slice(keep)).eval()
    loaded = pagcp.load_model(pagcp.save_model(small, tmp_path / "small.pt"))
    assert type(loaded) is TwoHeadNet
    assert loaded.shape_head.in_features == loaded.color_head.in_features == 64
    assert loaded.trunk.layer3[1].conv1.out_channels == 24
    x = val_batch(family, 8)
    with torch.no_grad(), graph.masked(keep):
        masked = model(x)
    with torch.no_grad():
        for a, b, c in zip(masked, small(x), loaded(x)):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
            assert torch.equal(c, b)


def test_prune_run_reports_the_family(run):
    """The report is the family's: its name, metrics, and the pruned compute against --target-gflops."""
    assert run["family"] == "twohead"
    assert run["metrics"] == ["shape_acc", "color_acc"] and run["primary_metric"] == "shape_acc"
    assert run["subset"] == SUBSET and run["oracle_split"] == "train" and run["img_size"] == IMG
    assert any(u["selected"] and u["channels_after"] < u["channels_before"] for u in run["units"])
    assert run["gflops_after"] < run["gflops_before"] and run["params_after"] < run["params_before"]
    assert run["gflops_after"] / run["gflops_before"] <= TARGET * 1.02  # the engine's target tolerance
    assert run["rounds"] > 1 and run["evaluations"] > 0
    folder = Path(run["run_dir"])
    files = ("report.json", "report.md", "channels.png", "pruned.pt", "finetuned.pt", "state.json", "oracle_images.txt")
    assert all((folder / f).is_file() for f in files)
    assert json.loads((folder / "report.json").read_text())["gflops_after"] == run["gflops_after"]
    assert "shape_acc" in (folder / "report.md").read_text()
    epochs = json.loads((folder / "finetune" / "results.json").read_text())["epoch_losses"]
    assert len(epochs) == 1 and all(math.isfinite(v) and v > 0 for v in epochs[0])


def test_prune_run_accuracy(run):
    """Accuracies are fractions; the trained net is far above chance (1/3); the search at this target costs
    accuracy, and one epoch of fine-tuning ends within 0.15 of the original and no worse than the pruned net
    (a few val images' slack: float sums differ with thread counts, and with them every trained weight)."""
    values = {f"{m}_{k}": run[f"{m}_{k}"] for m in run["metrics"] for k in ("before", "after", "finetuned")}
    assert all(isinstance(v, float) and 0 <= v <= 1 for v in values.values()), values
    assert run["shape_acc_before"] >= 0.8 and run["color_acc_before"] >= 0.95, values
    assert run["shape_acc_after"] + run["color_acc_after"] < run["shape_acc_before"] + run["color_acc_before"], values
    for m in run["metrics"]:
        assert run[f"{m}_finetuned"] >= run[f"{m}_after"] - 0.03, values
        assert run[f"{m}_finetuned"] >= run[f"{m}_before"] - 0.15, values


def test_pruned_checkpoint_is_the_searched_network(run, family):
    """pruned.pt loads through the registry into the family's class with the report's size, computes exactly
    what the original net masked by the search's final keep computes, and scores the report's metrics."""
    folder = Path(run["run_dir"])
    pruned = pagcp.load_model(folder / "pruned.pt")
    assert type(pruned) is TwoHeadNet and family_of(pruned) is family
    stats = pagcp.model_stats(pruned, IMG)
    assert stats["gflops"] == pytest.approx(run["gflops_after"], rel=1e-12)
    assert stats["params"] == run["params_after"]
    original = pagcp.load_model(BUNDLED)
    graph = family.trace(original, torch.zeros(1, 3, IMG, IMG))
    state = json.loads((folder / "state.json").read_text())
    keep = Keep.from_pruned(graph.full_keep().layout, state["keep"])
    assert graph.flops(keep, IMG) / 1e9 == pytest.approx(run["gflops_after"], rel=1e-9)
    x = val_batch(family)
    with torch.no_grad(), graph.masked(keep):
        masked = original(x)
    with torch.no_grad():
        for a, b in zip(masked, pruned(x)):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    cfg = family.data_config(DATA)
    device = torch.device("cpu")
    assert family.validate(pruned, cfg, IMG, device) == {m: run[f"{m}_after"] for m in run["metrics"]}
    tuned = pagcp.load_model(folder / "finetuned.pt")
    widths = {k: v.shape for k, v in tuned.state_dict().items()}
    assert widths == {k: v.shape for k, v in pruned.state_dict().items()}  # fine-tuning kept the pruned widths
    assert family.validate(tuned, cfg, IMG, device) == {m: run[f"{m}_finetuned"] for m in run["metrics"]}


def test_oracle_images_are_train_items(run, family):
    """The search looked at SUBSET distinct train items and at no val item."""
    listed = Path(run["oracle_images"]).read_text().split()
    cfg = family.data_config(DATA)
    train, val = set(family.split_items(cfg, "train")), set(family.split_items(cfg, "val"))
    assert len(listed) == len(set(listed)) == SUBSET
    assert set(listed) <= train and set(listed).isdisjoint(val)
    val_images = tensors(sorted(val), IMG)[0].flatten(1)
    oracle_images = tensors(listed, IMG)[0].flatten(1)
    assert torch.cdist(oracle_images, val_images).min() > 0  # not the same pictures under other names
