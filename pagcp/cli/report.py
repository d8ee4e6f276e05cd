"""The pruning report: ``report.json``, ``report.md``, the channels-per-unit plot and the console table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pagcp.runs import write_json_atomic

#: what the report keeps of each unit's decision
UNIT_FIELDS = ("name", "channels_before", "channels_after", "ratio", "tripped_task", "selected")
REQUIRED = (
    "params_before",
    "params_after",
    "gflops_before",
    "gflops_after",
    "map50_before",
    "map50_95_before",
    "map50_after",
    "map50_95_after",
    "map50_finetuned",
    "map50_95_finetuned",
    "img_size",
    "subset",
    "evaluations",
    "search_seconds",
    "lambda",
    "settings",
    "units",
)


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def summary_table(report: dict[str, Any]) -> str:
    """Params, GFLOPs, mAP50 and mAP50-95 before, after pruning and after fine-tuning."""
    rows = [
        ("before", report["params_before"], report["gflops_before"], report["map50_before"], report["map50_95_before"]),
        ("pruned", report["params_after"], report["gflops_after"], report["map50_after"], report["map50_95_after"]),
        (
            "fine-tuned",
            report["params_after"],
            report["gflops_after"],
            report["map50_finetuned"],
            report["map50_95_finetuned"],
        ),
    ]
    lines = [f"{'model':>12s} {'params':>12s} {'GFLOPs':>8s} {'mAP50':>7s} {'mAP50-95':>9s}"]
    for name, params, gflops, m50, m5095 in rows:
        lines.append(f"{name:>12s} {params:>12,d} {gflops:8.3f} {_fmt(m50, '7.4f'):>7s} {_fmt(m5095, '9.4f'):>9s}")
    return "\n".join(lines)


def units_table(units: list[dict[str, Any]]) -> str:
    lines = ["| unit | channels before | after | ratio | tripped task | selected |", "|---|---:|---:|---:|---|---|"]
    for u in units:
        lines.append(
            f"| `{u['name']}` | {u['channels_before']} | {u['channels_after']} | {u['ratio']:.2f} | "
            f"{u['tripped_task'] or '-'} | {'yes' if u['selected'] else 'no'} |"
        )
    return "\n".join(lines)


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
        f"- search: {report['evaluations']} candidate evaluations in {report['search_seconds']:.1f} s",
        "",
        "```",
        summary_table(report),
        "```",
        "",
        "## Units (search order)",
        "",
        units_table(report["units"]),
        "",
    ]
    path.write_text("\n".join(text), encoding="utf-8")


def plot_channels(path: Path, units: list[dict[str, Any]]) -> None:
    """Bar chart of channels before/after per unit (search order)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [u["name"] for u in units]
    fig, ax = plt.subplots(figsize=(max(8, 0.22 * len(names)), 4.5))
    x = range(len(names))
    ax.bar(x, [u["channels_before"] for u in units], color="#c8d6e5", label="before")
    ax.bar(x, [u["channels_after"] for u in units], color="#2e86de", label="kept")
    ax.set_xticks(list(x))
    ax.set_xticklabels(names, rotation=90, fontsize=6)
    ax.set_ylabel("channels")
    ax.set_title("PAGCP: channels kept per unit (search order)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(run_dir: Path, report: dict[str, Any]) -> None:
    """report.json (atomically), report.md and channels.png in ``run_dir``."""
    missing = [k for k in REQUIRED if k not in report]
    if missing:
        raise KeyError(f"report lacks {', '.join(missing)}")
    write_json_atomic(run_dir / "report.json", report)
    write_markdown(run_dir / "report.md", report)
    plot_channels(run_dir / "channels.png", report["units"])
