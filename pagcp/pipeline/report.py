"""The pruning report: ``report.json``, ``report.md``, the channels-per-unit and cycles plots, the console tables.

The report's figures are the model family's metrics (``report["metrics"]``; box mAP50-95 and mAP50 for the
YOLO families), each as ``<metric>_before``, ``_after`` (pruned) and ``_finetuned``, and per cycle as
``<metric>_pruned`` and ``_finetuned``; ``report["primary_metric"]`` is the one the cycle table and plot show.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pagcp.runs import write_json_atomic

#: what the report keeps of each unit's decision
UNIT_FIELDS = ("name", "channels_before", "channels_after", "ratio", "tripped_task", "selected", "target_ratio")
REQUIRED = (
    "params_before",
    "params_after",
    "gflops_before",
    "gflops_after",
    "metrics",
    "primary_metric",
    "img_size",
    "subset",
    "evaluations",
    "search_seconds",
    "lambda",
    "settings",
    "units",
    "oracle_split",
    "stop_rule",
    "cycles",
)


#: channels.png's colours: kept, removed, kept whole after a first-ratio trip, topk's hatching
BLUE, RED, PALE, GREY = "#2e86de", "#ee5253", "#c8d6e5", "#8395a7"
#: how the report names the metrics it knows (any other is shown by its key)
METRIC_LABELS = {"map50_95": "mAP50-95", "map50": "mAP50"}


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def summary_table(report: dict[str, Any]) -> str:
    """Params, GFLOPs and the family's metrics before, after pruning and after fine-tuning."""
    metrics = report["metrics"]
    rows = [("before", report["params_before"], report["gflops_before"], "before"),
            ("pruned", report["params_after"], report["gflops_after"], "after"),
            ("fine-tuned", report["params_after"], report["gflops_after"], "finetuned")]  # fmt: skip
    if report[f"{metrics[0]}_finetuned"] is None:  # --finetune-epochs 0: there is no fine-tuned model
        rows.pop()
    widths = [max(9, len(metric_label(m))) for m in metrics]
    head = " ".join(f"{metric_label(m):>{w}s}" for m, w in zip(metrics, widths))
    lines = [f"{'model':>12s} {'params':>12s} {'GFLOPs':>8s} {head}"]
    for name, params, gflops, key in rows:
        values = " ".join(f"{_fmt(report[f'{m}_{key}'], f'{w}.4f'):>{w}s}" for m, w in zip(metrics, widths))
        lines.append(f"{name:>12s} {params:>12,d} {gflops:8.3f} {values}")
    return "\n".join(lines)


def unit_outcome(u: dict[str, Any], topk: float) -> str:
    """What happened to one unit, in words."""
    tripped = f"; the next ratio tripped the {u['tripped_task']} loss" if u["tripped_task"] else ""
    target = u.get("target_ratio")
    if u["selected"] and target:
        return (f"pruned {u['channels_before']} → {u['channels_after']} at ratio {target:.2f} (searched to "
                f"{u['ratio']:.2f}; less to meet --target-gflops){tripped}")  # fmt: skip
    if u["selected"]:
        return f"pruned {u['channels_before']} → {u['channels_after']} at ratio {u['ratio']:.2f}{tripped}"
    if u["ratio"] > 0 and target == 0:
        return f"searched to {u['ratio']:.2f}, left unpruned to meet --target-gflops{tripped}"
    if u["ratio"] > 0:
        return f"searched to {u['ratio']:.2f}, left unpruned by topk {topk:g}{tripped}"
    if u["tripped_task"]:
        return f"kept whole: {u['tripped_task']} loss tripped at the first ratio"
    return "kept whole"


def cycles_table(cycles: list[dict[str, Any]], metric: str = "map50_95") -> str:
    """One row per prune -> fine-tune cycle, with ``metric`` (the family's first) after its search and fine-tune."""
    label = metric_label(metric)
    lines = [f"| cycle | round | GFLOPs | params | {label} pruned | {label} fine-tuned | search s | evaluations |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for c in cycles:
        lines.append(f"| {c['cycle']} | {c['round']} | {c['gflops']:.4f} | {c['params']:,} | "
                     f"{c[f'{metric}_pruned']:.4f} | {_fmt(c[f'{metric}_finetuned'], '.4f')} | "
                     f"{c['search_seconds']:.1f} | {c['evaluations']} |")  # fmt: skip
    return "\n".join(lines)


def latency_lines(latency: dict[str, Any] | None) -> list[str]:
    """The ONNX Runtime CPU latency of the original and the pruned model, or why it is missing."""
    if not latency:
        return []
    if "error" in latency:
        return [f"- ONNX Runtime latency: not measured ({latency['error']})"]
    o, p = latency["original"], latency["pruned"]
    return [f"- ONNX Runtime CPU latency (batch 1, {o['threads']} threads, {o['runs']} interleaved runs, median / "
            f"min): original {o['median_ms']:.2f} / {o['min_ms']:.2f} ms, pruned {p['median_ms']:.2f} / "
            f"{p['min_ms']:.2f} ms ({speed_words(o['median_ms'], p['median_ms'])} by the median)"]  # fmt: skip


def speed_words(before_ms: float, after_ms: float) -> str:
    """ "1.28x faster" or "1.07x slower" (never a factor below 1 called faster)."""
    if after_ms <= before_ms:
        return f"{before_ms / after_ms:.2f}x faster"
    return f"{after_ms / before_ms:.2f}x slower"


def units_table(units: list[dict[str, Any]], topk: float) -> str:
    lines = ["| unit | channels | outcome |", "|---|---:|---|"]
    for u in units:
        lines.append(f"| `{u['name']}` | {u['channels_before']} → {u['channels_after']} | {unit_outcome(u, topk)} |")
    return "\n".join(lines)


def _outputs(report: dict[str, Any]) -> list[str]:
    """The files of the run and the commands that use them."""
    run_dir = Path(report.get("run_dir", "."))
    files = [
        f"- `{report.get('pruned', run_dir / 'pruned.pt')}`: the pruned model (`pagcp.load_model` reads it)",
        f"- `{run_dir / 'channels.png'}`: channels kept and removed per unit",
        f"- `{run_dir / 'state.json'}`: the search state (`--resume` continues from it)",
        f"- `{run_dir / 'report.json'}`: this report as JSON",
    ]
    if len(report.get("cycles", [])) > 1:
        files[2] = f"- `{run_dir / 'cycle*'}`: each cycle's `state.json`, `pruned.pt`, `finetune/`, `finetuned.pt`"
        files.append(
            f"- `{run_dir / 'cycles.png'}`: {metric_label(report['primary_metric'])} against GFLOPs across the cycles"
        )
    latency = report.get("latency") or {}
    if "pruned" in latency:
        files.append(f"- `{latency['pruned']['onnx']}`: the final model in ONNX (ONNX Runtime ran it for the latency)")
    best = report.get("pruned")
    if report.get("finetuned"):
        best = report["finetuned"]
        files.insert(1, f"- `{best}`: the pruned model after fine-tuning; curves in `{run_dir / 'finetune'}`")
    commands = [c.replace("{weights}", str(best)) for c in report.get("commands", [])]
    usage = ["Validate, fine-tune further or export it:", "", "```bash", *commands, "```", ""] if commands else []
    return ["## Outputs", "", *files, "", *usage]


def write_markdown(path: Path, report: dict[str, Any]) -> None:
    s = report["settings"]
    text = [
        "# PAGCP pruning report",
        "",
        f"- weights: `{report.get('weights')}`, data: `{report.get('data')}`, image size {report['img_size']}, "
        f"oracle subset {report['subset']} images",
        f"- rule: initial rate {s['initial_rate']}, initial threshold {s['initial_thres']}, exp {s['exp']}, "
        f"topk {s['topk']}, compression {s['compression']}, saliency {s['saliency']}, compat {s['compat']}, "
        f"λ = {report['lambda']:.6f}",
        f"- oracle: {report['subset']} images of the {report['oracle_split']} split (listed in "
        f"`oracle_images.txt`); {', '.join(metric_label(m) for m in report['metrics'])} measured on the val split",
        f"- search: {report['evaluations']} candidate evaluations in {report['search_seconds']:.1f} s; "
        f"ended by: {report['stop_rule']}",
        *latency_lines(report.get("latency")),
        "",
        "```",
        summary_table(report),
        "```",
        "",
        *(
            [
                "## Cycles",
                "",
                cycles_table(report["cycles"], report["primary_metric"]),
                "",
                f"![{metric_label(report['primary_metric'])} against GFLOPs](cycles.png)",
                "",
            ]
            if len(report["cycles"]) > 1
            else []
        ),
        *_outputs(report),
        "## Units (search order)",
        "",
        units_table(report["units"], s["topk"]),
        "",
    ]
    path.write_text("\n".join(text), encoding="utf-8")


def _layer_key(name: str) -> list[Any]:
    """Sort key putting ``model.10.cv1`` after ``model.9.m.0.cv2`` (numbers compared as numbers)."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in name.split(".")]


def plot_channels(path: Path, units: list[dict[str, Any]]) -> list[str]:
    """One horizontal bar per unit, by layer: kept channels, removed ones, units topk left unpruned, and units
    kept whole because their first ratio tripped a loss (told apart from pruned ones); returns the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    units = sorted(units, key=lambda u: _layer_key(u["name"]))
    fig, ax = plt.subplots(figsize=(9, max(2.4, 1.4 + 0.24 * len(units))))
    y = list(range(len(units)))
    kept = [u["channels_after"] for u in units]
    removed = [u["channels_before"] - u["channels_after"] for u in units]
    first_trip = [u["ratio"] == 0 and bool(u["tripped_task"]) for u in units]
    ax.barh(y, kept, color=[PALE if t else BLUE for t in first_trip])
    ax.barh(y, removed, left=kept, color=RED)
    legend = [Patch(color=BLUE, label="kept"), Patch(color=RED, label="removed")]
    if any(first_trip):
        legend.append(Patch(color=PALE, label="kept whole: its first ratio tripped a loss"))
    topk_left = [(i, u) for i, u in enumerate(units) if not u["selected"] and u["ratio"] > 0]
    if topk_left:  # searched to a ratio but not among the most loss-efficient units: drawn where it would cut
        hatched = {"fill": False, "hatch": "///", "edgecolor": GREY}
        ax.barh([i for i, _ in topk_left], [round(u["ratio"] * u["channels_before"]) for _, u in topk_left],
                left=[u["channels_before"] * (1 - u["ratio"]) for _, u in topk_left], **hatched)  # fmt: skip
        legend.append(Patch(label="searched, left unpruned by topk", **hatched))
    width = max(u["channels_before"] for u in units)
    for i, u in enumerate(units):
        share = f"{u['channels_after']}/{u['channels_before']}"
        ax.text(u["channels_before"] + width * 0.01, i, share, va="center", fontsize=8)
    ax.set_yticks(y)
    ax.set_yticklabels([u["name"].removeprefix("model.") for u in units], fontsize=8)
    ax.set_ylim(len(units) - 0.5, -0.5)  # first layer on top, no empty rows
    ax.set_xlim(0, width * 1.12)
    ax.set_xlabel("output channels")
    ax.set_title(f"PAGCP: channels per unit, by layer ({sum(removed)} of {sum(kept) + sum(removed)} removed)")
    fig.legend(handles=legend, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.6 / fig.get_figheight(), 1, 1))  # room for the legend below
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [h.get_label() for h in legend]


def write_report(run_dir: Path, report: dict[str, Any]) -> None:
    """report.json (atomically), report.md and channels.png in ``run_dir``."""
    missing = [k for k in REQUIRED if k not in report]
    if missing:
        raise KeyError(f"report lacks {', '.join(missing)}")
    write_json_atomic(run_dir / "report.json", report)
    write_markdown(run_dir / "report.md", report)
    plot_channels(run_dir / "channels.png", report["units"])
    if len(report["cycles"]) > 1:
        plot_cycles(run_dir / "cycles.png", report)


def plot_cycles(path: Path, report: dict[str, Any]) -> None:
    """The primary metric against GFLOPs: the original, then each cycle after its search and after its fine-tune."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = report["primary_metric"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs, ys = [report["gflops_before"]], [report[f"{m}_before"]]
    ax.annotate("original", (xs[0], ys[0]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    for c in report["cycles"]:
        xs.append(c["gflops"])
        ys.append(c[f"{m}_pruned"])
        ax.annotate(f"cycle {c['cycle']}", (c["gflops"], c[f"{m}_pruned"]), textcoords="offset points",
                    xytext=(4, -10), fontsize=8)  # fmt: skip
        if c[f"{m}_finetuned"] is not None:
            xs.append(c["gflops"])
            ys.append(c[f"{m}_finetuned"])
    ax.plot(xs, ys, "-o", color="#2e86de", label="search (down) and fine-tune (up) of each cycle")
    if report.get(f"{m}_finetuned") is not None:
        ax.plot([report["gflops_after"]], [report[f"{m}_finetuned"]], "*", ms=14, color="#ee5253",
                label="after the final fine-tune")  # fmt: skip
    ax.invert_xaxis()
    ax.set_xlabel("GFLOPs (pruning goes right)")
    ax.set_ylabel(f"{metric_label(m)} (val)")
    ax.set_title("PAGCP cycles: accuracy against compute")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
