"""The roadmap report (paper Sec. 2, Fig. 2): every step's size and cost beside the paper's, in words and charts.

``python -m convnext_pl.roadmap [--csv FILE] [--plot FILE.png]`` prints :func:`format_table` of
:func:`step_table`; the ladder (``convnext_pl.roadmap.ladder``) writes its measured rows with :func:`write_csv`,
:func:`markdown_table` and :func:`plot`. The networks are in ``convnext_pl.roadmap.steps``; this module only
measures and presents them.
"""

import csv
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
from matplotlib.figure import Figure

from convnext_pl.models.flops import count_macs
from convnext_pl.roadmap.steps import STEPS, RoadmapConfig, create_roadmap_model

CSV_COLUMNS = ["step", "name", "params", "gflops", "paper_gflops", "paper_top1"]
GFLOPS_TOLERANCE = 0.03  # a faithful count lands within 3% of the paper unless docs/roadmap.md says why not

_NORMS, _ACTS = {"batch": "BN", "layer": "LN"}, {"relu": "ReLU", "gelu": "GELU"}


def describe(config: RoadmapConfig) -> str:
    """The block diagram of a step in words, generated from its switches (the same ones that build it)."""
    norm, act = _NORMS[config.norm], _ACTS[config.act]
    widths = [config.out_width(i) for i in range(len(config.depths))]
    p, stem_width = config.patch_size, config.dims[0]
    if config.stem == "resnet":
        stem = f"7x7 conv stride {min(p, 2)}, {norm}, {act}" + (", 3x3 max pool stride 2" if p == 4 else "")
    else:
        stem = f"{p}x{p} conv stride {p}" + (f", {norm}" if config.downsampling == "separate" else "")
    parts = []
    conv_acts = (*config.act_after[:2], False)  # act_after[2] is the one after the residual sum
    for (cin, cout, k, _, groups), has_norm, has_act in zip(
        config.conv_plan(widths[0], 0, 1), config.norm_after, conv_acts, strict=True
    ):
        kind = "depthwise conv" if groups == cin > 1 else "conv"
        parts.append(
            f"{k}x{k} {kind} {cin}->{cout}"
            + (f", {norm}" if has_norm else "")
            + (f", {act}" if has_act else "")
        )
    residual = "layer scale, + input" if config.layer_scale_init_value > 0 else "+ input"
    block = " -> ".join(parts) + f" -> {residual}" + (f" -> {act}" if config.act_after[2] else "")
    if config.downsampling == "in_block":
        downsampling = (
            f"in the first block of stages 2-4: stride-2 {config.kernel_size}x{config.kernel_size} conv, "
        )
        downsampling += f"stride-2 1x1 projection shortcut + {norm}"
    else:
        downsampling = f"separate layers between stages: {norm}, 2x2 conv stride 2"
    head_norm = f"{norm}, " if config.downsampling == "separate" else ""
    return "\n".join(
        [
            f"stem: {stem} (3 -> {stem_width} channels)",
            f"stages: {'-'.join(map(str, config.depths))} blocks, widths {'-'.join(map(str, widths))}",
            f"block (stage 1): {block}",
            f"downsampling: {downsampling}",
            f"head: global average pool, {head_norm}linear {widths[-1]} -> classes",
        ]
    )


def step_table(names: Sequence[str] | None = None, image_size: int = 224) -> list[dict]:
    """Params (1000 classes) and paper-convention GFLOPs of each step beside the paper's numbers."""
    rows = []
    for name in names or STEPS:
        # Shapes are all a count needs: on the meta device nothing is allocated or computed (10x faster).
        with torch.device("meta"):
            model = create_roadmap_model(name)
            gflops = count_macs(model, image_size) / 1e9
        step = STEPS[name]
        row = dict(
            step=step.index, name=name, params=sum(p.numel() for p in model.parameters()), gflops=gflops
        )
        rows.append(row | dict(paper_gflops=step.paper_gflops, paper_top1=step.paper_top1))
    return rows


def format_table(rows: Sequence[dict]) -> str:
    """The report as aligned text; a ``*`` marks a GFLOPs difference beyond the tolerance (docs/roadmap.md)."""
    header = f"{'step':>4}  {'name':<30} {'params':>12} {'GFLOPs':>7} {'paper':>6} {'diff':>7}  {'paper top-1':>11}"
    lines = [header, "-" * len(header)]
    for r in rows:
        diff = r["gflops"] / r["paper_gflops"] - 1
        flag = "*" if abs(diff) > GFLOPS_TOLERANCE else " "
        lines.append(
            f"{r['step']:>4}  {r['name']:<30} {r['params']:>12,} {r['gflops']:>7.3f} {r['paper_gflops']:>6.2f} "
            f"{diff:>+7.1%}{flag} {r['paper_top1']:>11.2f}"
        )
    if any(abs(r["gflops"] / r["paper_gflops"] - 1) > GFLOPS_TOLERANCE for r in rows):
        lines.append("* differs from the paper by more than 3%: see docs/roadmap.md for why.")
    return "\n".join(lines)


def write_csv(rows: Sequence[dict], path: str | Path, columns: Sequence[str] = CSV_COLUMNS) -> None:
    """Write ``columns`` of ``rows`` as CSV (floats rounded to 4 decimals)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})


def plot(rows: Sequence[dict], path: str | Path | None = None, measured_key: str | None = None) -> Figure:
    """A Figure-2-style chart: top-1 bars per step (the paper's, and ``row[measured_key]`` if given) and GFLOPs.

    Args:
        rows: rows of :func:`step_table` (GFLOPs at 224, drawn beside the paper's) or of the ladder.
        path: PNG file to write (None: only return the figure).
        measured_key: column holding accuracy measured by the ladder (in %), drawn in its own panel; the GFLOPs
            are then those of the trained networks, at their size, so the paper's are not drawn beside them.
    """
    labels = [f"{r['step']}: {STEPS[r['name']].change}" for r in rows]
    panels = [("paper_top1", "ImageNet-1K top-1 (paper), %")]
    if measured_key:
        panels.append((measured_key, "top-1 measured here, %"))
    # The Figure API, not pyplot: no global backend or figure state, so it is the same in scripts and notebooks.
    fig = Figure(figsize=(4 * len(panels) + 6, 0.4 * len(rows) + 1.5))
    axes = fig.subplots(1, len(panels) + 1, sharey=True)
    y = range(len(rows))
    for ax, (key, title) in zip(axes, panels, strict=False):
        values = [r[key] for r in rows]
        ax.barh(y, values, color="tab:blue" if key == "paper_top1" else "tab:green")
        low, high = min(values), max(values)
        ax.set_xlim(max(0.0, low - 0.2 * (high - low + 1)), high + 0.1 * (high - low + 1))
        ax.set_title(title, fontsize=10)
        for i, v in enumerate(values):
            ax.text(v, i, f" {v:.2f}", va="center", fontsize=8)
    flops_ax = axes[-1]
    flops_ax.barh(y, [r["gflops"] for r in rows], color="tab:gray", label="counted here, 224x224")
    if measured_key:
        flops_ax.set_title("GFLOPs of the trained networks", fontsize=10)
    else:
        flops_ax.scatter(
            [r["paper_gflops"] for r in rows], y, color="tab:red", marker="|", s=120, label="paper"
        )
        flops_ax.set_xlim(0, 1.45 * max(max(r["gflops"], r["paper_gflops"]) for r in rows))  # legend room
        flops_ax.legend(fontsize=8, loc="lower right")
        flops_ax.set_title("GFLOPs (multiply-adds)", fontsize=10)
    axes[0].set_yticks(list(y), labels, fontsize=8)
    axes[0].invert_yaxis()  # step 0 on top, as in Fig. 2
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


@torch.no_grad()
def inference_throughput(
    model: nn.Module, batch_size: int = 8, image_size: int = 64, iters: int = 5
) -> float:
    """Images per second of ``model`` in eval mode on random input (one warm-up pass, then ``iters`` timed)."""
    was_training = model.training
    model.eval()
    x = torch.randn(batch_size, 3, image_size, image_size)
    model(x)  # warm-up: first-call allocations and kernel selection
    start = time.perf_counter()
    for _ in range(iters):
        model(x)
    seconds = time.perf_counter() - start
    model.train(was_training)
    return batch_size * iters / seconds


_MARKDOWN_FORMATS = {
    "top1": ".2f",
    "paper_top1": ".2f",
    "gflops": ".4f",
    "paper_gflops": ".2f",
    "train_img_per_s": ".0f",
}


def markdown_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """Rows as a GitHub Markdown table."""

    def cell(column: str, value) -> str:
        default = ",.2f" if isinstance(value, float) else ","
        return format(value, _MARKDOWN_FORMATS.get(column, default) if isinstance(value, int | float) else "")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(c, r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
