"""Looking inside a network: the effective receptive field, the feature maps of each stage, the layer-scale gammas."""

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from sklearn.datasets import load_sample_images
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD


# ------------------------------------------------------------------------------ effective receptive field
def sample_photo_crops(count: int, size: int, seed: int = 0) -> torch.Tensor:
    """``count`` random ``size`` x ``size`` crops of scikit-learn's two bundled photographs (427x640), normalised
    with the ImageNet statistics: natural images without any download.

    Returns:
        FloatTensor (count, 3, size, size).
    """
    photos = [torch.tensor(p).permute(2, 0, 1).float() / 255 for p in load_sample_images().images]
    generator = torch.Generator().manual_seed(seed)
    crops = []
    for i in range(count):
        photo = photos[i % len(photos)]  # (3, H, W)
        top = int(torch.randint(photo.shape[1] - size + 1, (1,), generator=generator))
        left = int(torch.randint(photo.shape[2] - size + 1, (1,), generator=generator))
        crops.append(photo[:, top : top + size, left : left + size])
    mean, std = torch.tensor(IMAGENET_DEFAULT_MEAN), torch.tensor(IMAGENET_DEFAULT_STD)
    return (torch.stack(crops) - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


def effective_receptive_field(net: nn.Module, images: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """How much each input pixel moves the centre of the last stage's feature map (Luo et al., NeurIPS 2016).

    The gradient of the centre pixel of ``forward_stages(x)[-1]`` (summed over channels) with respect to the
    input, its absolute value summed over input channels and averaged over ``images``. In eval mode the images
    of a batch do not interact (BatchNorm uses its running statistics), so one backward pass per batch gives
    every image's own gradient.

    Args:
        net: a model with ``forward_stages`` (``ConvNeXt``, ``RoadmapNet``).
        images: (N, C, H, W) inputs.
        batch_size: images per backward pass.

    Returns:
        FloatTensor (H, W), non-negative.
    """
    net.eval()
    total = torch.zeros(images.shape[-2:])
    for batch in images.split(batch_size):
        batch = batch.clone().requires_grad_(True)
        features = net.forward_stages(batch)[-1]  # (N, C, h, w)
        features[:, :, features.shape[-2] // 2, features.shape[-1] // 2].sum().backward()
        total += batch.grad.abs().sum(dim=(0, 1))  # (N, C, H, W) -> (H, W)
    return total / len(images)


def high_contribution_area_ratio(erf: torch.Tensor, fraction: float = 0.99) -> float:
    """Area of the smallest square around the centre holding ``fraction`` of the ERF, over the image area.

    A one-number summary of an ERF map in the spirit of RepLKNet (Ding et al., CVPR 2022, Sec. 5.2), which
    uses the smallest rectangle covering a share of the contribution; a square around the centre suffices
    here because every map is computed at the centre.

    Args:
        erf: (H, W) map from :func:`effective_receptive_field`.
        fraction: share of the total contribution the square must hold.
    """
    height, width = erf.shape
    cy, cx, total = height // 2, width // 2, float(erf.sum())
    for radius in range(max(height, width)):
        window = erf[max(0, cy - radius) : cy + radius + 1, max(0, cx - radius) : cx + radius + 1]
        if float(window.sum()) >= fraction * total:
            return window.numel() / erf.numel()
    return 1.0


def plot_receptive_fields(
    erfs: Mapping[str, torch.Tensor], fractions: Sequence[float] = (0.5, 0.99)
) -> Figure:
    """ERF maps side by side, each divided by its maximum, on a log colour scale down to 1e-3; each title gives
    the share of the image holding ``fractions`` of the gradient (the core, and nearly all of it)."""
    fig = Figure(figsize=(4 * len(erfs), 4.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(erfs)))
    for ax, (name, erf) in zip(axes, erfs.items(), strict=True):
        shown = (erf / erf.max()).clamp(min=1e-3).numpy()
        image = ax.imshow(shown, cmap="magma", norm=LogNorm(vmin=1e-3, vmax=1))
        shares = [
            f"{f:.0%} of the gradient in {high_contribution_area_ratio(erf, f):.1%} of the image"
            for f in fractions
        ]
        ax.set_title("\n".join([name, *shares]), fontsize=9)
        ax.axis("off")
    fig.colorbar(image, ax=axes.tolist(), shrink=0.8, label="|d centre / d pixel|, relative to max")
    return fig


# ------------------------------------------------------------------------------ stages and layer scale
@torch.no_grad()
def stage_feature_maps(net: nn.Module, image: torch.Tensor) -> list[torch.Tensor]:
    """The feature map after each stage for one (C, H, W) image: a list of (C_i, H_i, W_i) tensors."""
    net.eval()
    return [features[0] for features in net.forward_stages(image[None])]


def plot_stage_maps(image: torch.Tensor, maps: Sequence[torch.Tensor], channels: int = 6) -> Figure:
    """Per stage, a row: the input, the mean |activation| over channels, then the ``channels`` most active ones.

    Args:
        image: the (C, H, W) input, shown in grey (its channel mean).
        maps: output of :func:`stage_feature_maps`.
        channels: channels shown per stage, those of largest mean |activation|.
    """
    fig = Figure(figsize=(1.6 * (channels + 2), 1.7 * len(maps)), layout="constrained")
    axes = fig.subplots(len(maps), channels + 2, squeeze=False)
    for row, features in zip(axes, maps, strict=True):
        energy = features.abs().mean(dim=(1, 2))  # (C, h, w) -> (C,)
        top = energy.topk(min(channels, len(energy))).indices.tolist()
        panels = [("input", image.mean(0)), ("mean |act|", features.abs().mean(0))]
        panels += [(f"ch {c}", features[c]) for c in top]
        for ax, (title, panel) in zip(row, panels, strict=False):
            ax.imshow(panel.numpy(), cmap="gray" if title == "input" else "viridis")
            ax.set_title(title, fontsize=8)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
        c, h, w = features.shape
        row[0].set_ylabel(f"{c} x {h} x {w}", fontsize=8)
    return fig


def layer_scale_gammas(net: nn.Module) -> dict[str, torch.Tensor]:
    """Every block's layer-scale vector ``gamma`` (paper Sec. 2 recipe), keyed ``"stage.block"``."""
    return {
        f"{i}.{j}": block.gamma.detach().cpu()
        for i, stage in enumerate(net.stages)
        for j, block in enumerate(stage)
        if getattr(block, "gamma", None) is not None
    }


def plot_layer_scale(gammas: Mapping[str, torch.Tensor], init_value: float) -> Figure:
    """Mean |gamma| per block (bars) with its channel range, against the initial value, on a log axis."""
    fig = Figure(figsize=(max(6.0, 0.45 * len(gammas) + 2), 3.8), layout="constrained")
    ax = fig.subplots()
    magnitudes = [gamma.abs() for gamma in gammas.values()]
    means = np.array([float(m.mean()) for m in magnitudes])
    low = means - np.array([float(m.min()) for m in magnitudes])
    high = np.array([float(m.max()) for m in magnitudes]) - means
    x = np.arange(len(gammas))
    ax.bar(x, means, yerr=[low, high], capsize=2, color="tab:blue", label="mean |gamma| (bar: min..max)")
    ax.axhline(init_value, color="tab:red", linestyle="--", label=f"initial value {init_value:g}")
    ax.set_yscale("log")
    ax.set_xticks(x, list(gammas), rotation=90, fontsize=8)
    ax.set(xlabel="block (stage.index)", ylabel="|gamma|")
    fig.legend(loc="outside upper center", ncols=2, fontsize=8)
    return fig
