"""ConvNeXt ("A ConvNet for the 2020s", Liu et al., CVPR 2022) and its V2 block (Woo et al., 2023).

One implementation serves every variant; the variants themselves are data in ``registry.py``.
Parameter names are the official repository's (``downsample_layers``, ``stages.{i}.{j}.dwconv``,
``pwconv1``, ``pwconv2``, ``gamma``, ``norm``, ``head``), so an official checkpoint loads without renaming.
"""

from collections.abc import Sequence
from itertools import accumulate

import torch
import torch.nn as nn
from timm.layers import DropPath, LayerNorm2d, trunc_normal_
from torch.utils.checkpoint import checkpoint

from convnext_pl.models.layer_ids import block_layer_ids, single_layer_ids

LN_EPS = 1e-6  # paper and official code: every LayerNorm uses eps 1e-6


def drop_path_rates(drop_path_rate: float, depths: Sequence[int]) -> list[list[float]]:
    """Stochastic depth rate of every block, stage by stage: linear from 0 to ``drop_path_rate`` over all blocks
    (official code), so the last block gets the full rate. Serves every network of the package."""
    # device="cpu": the rates are Python floats, so build them on the CPU even under a meta-device context
    # (deferred init, FSDP), where .tolist() of a meta tensor fails.
    rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
    starts = list(accumulate(depths, initial=0))
    return [rates[start : start + depth] for start, depth in zip(starts, depths, strict=False)]


class GRN(nn.Module):
    """Global response normalization (ConvNeXt V2, Eq. 1-3) on NHWC input.

    Parameters are stored as ``(1, 1, 1, C)`` like the official V2 checkpoints, initialised to zero so that
    the layer starts as the identity.
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, x: torch.Tensor, over_batch: bool = False) -> torch.Tensor:
        """``over_batch``: one norm over every site of the batch, as the official sparse FCMAE encoder's
        MinkowskiGRN computes it (ConvNeXt-V2#86), instead of one per image."""
        dims = (0, 1, 2) if over_batch else (1, 2)
        g = torch.linalg.vector_norm(x, ord=2, dim=dims, keepdim=True)  # (N or 1, 1, 1, C): L2 over H, W
        n = g / (g.mean(dim=-1, keepdim=True) + self.eps)  # divisive normalisation across channels
        return self.gamma * (x * n) + self.beta + x


class Block(nn.Module):
    """ConvNeXt block: dwconv 7x7 -> LN -> 1x1 C->4C -> GELU [-> GRN] -> 1x1 4C->C -> layer scale -> drop path.

    The pointwise layers are ``nn.Linear`` on NHWC, as in the official code (same function as 1x1 convs).

    Args:
        dim: channels.
        drop_path: stochastic depth rate of this block.
        layer_scale_init_value: initial value of the per-channel scale ``gamma``; 0 disables layer scale.
        kernel_size: depthwise kernel size (the paper settles on 7, Sec. 2.5).
        use_grn: ConvNeXt V2 block (GRN after GELU; V2 also drops layer scale).
        mlp_ratio: expansion of the inverted bottleneck (4 in the paper, Sec. 2.4).
    """

    def __init__(
        self,
        dim: int,
        drop_path: float = 0.0,
        layer_scale_init_value: float = 1e-6,
        kernel_size: int = 7,
        use_grn: bool = False,
        mlp_ratio: int = 4,
    ):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.pwconv1 = nn.Linear(dim, mlp_ratio * dim)
        self.act = nn.GELU()
        self.grn = GRN(mlp_ratio * dim) if use_grn else nn.Identity()
        self.pwconv2 = nn.Linear(mlp_ratio * dim, dim)
        self.gamma = (
            nn.Parameter(torch.full((dim,), layer_scale_init_value)) if layer_scale_init_value > 0 else None
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(
        self, x: torch.Tensor, keep: torch.Tensor | None = None, grn_over_batch: bool = False
    ) -> torch.Tensor:
        """``keep`` (N, 1, H, W), 1 at visible sites, runs the block on the visible sites only, as a sparse
        convolution would (FCMAE's masked encoder, ``convnext_pl.models.fcmae``): ``x`` must be zero where
        masked, and so is the result. ``grn_over_batch``: see :class:`GRN`."""
        if keep is not None:
            return self._forward_visible(x, keep, grn_over_batch)
        shortcut = x
        x = self.dwconv(x)
        # On a channels_last tensor this permute is a view: LayerNorm and the Linears run without a copy.
        x = x.permute(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
        x = self.pwconv2(self.grn(self.act(self.pwconv1(self.norm(x)))))
        if self.gamma is not None:
            x = self.gamma * x
        x = x.permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
        return shortcut + self.drop_path(x)

    def _forward_visible(self, x: torch.Tensor, keep: torch.Tensor, grn_over_batch: bool) -> torch.Tensor:
        # The depthwise convolution is the only layer here that mixes sites, and it reads zeros where the sparse
        # tensor has no site. What it and the per-site layers after it write at masked sites is never read: GRN's
        # input and the block's output are masked.
        shortcut = x
        y = self.act(self.pwconv1(self.norm(self.dwconv(x).permute(0, 2, 3, 1))))  # NHWC
        if isinstance(self.grn, GRN):  # its norm must cover the visible sites only: zero the others first
            y = self.grn(y * keep.permute(0, 2, 3, 1), over_batch=grn_over_batch)
        y = self.pwconv2(y)
        if self.gamma is not None:
            y = self.gamma * y
        # What the per-site layers wrote at masked sites is dropped before anything mixes sites again.
        return shortcut + self.drop_path(y.permute(0, 3, 1, 2) * keep)


class ClassifierMixin:
    """The head and the research interface shared by the ConvNeXt models (timm's conventions).

    A subclass provides ``self.norm`` (applied after pooling), ``self.head``, ``self.num_features`` and
    ``forward_features`` returning an (N, C, H, W) map.
    """

    grad_checkpointing: bool = False

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.norm(x.mean(dim=(-2, -1)))  # global average pool: (N, C, H, W) -> (N, C)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head by a freshly initialised one with ``num_classes`` outputs (0: no head)."""
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.head.apply(init_weights)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of storing them."""
        self.grad_checkpointing = enable

    def _run_blocks(self, blocks: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        for block in blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


def init_weights(m: nn.Module) -> None:
    """The official initialisation of one module (``model.apply(init_weights)``), shared by the roadmap networks.

    Paper/official code: truncated normal std 0.02 for conv and linear weights, zero bias.
    """
    if isinstance(m, nn.Conv2d | nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def scale_head(head: nn.Module, scale: float) -> None:
    """Multiply a linear classifier's weight and bias by ``scale`` (``head_init_scale``) in place.

    Fine-tuning starts from a near-zero head (head_init_scale 0.001); pre-training uses 1.0.
    """
    if isinstance(head, nn.Linear):
        with torch.no_grad():
            head.weight.mul_(scale)
            head.bias.mul_(scale)


class HierarchicalMixin(ClassifierMixin):
    """Stage-wise forward and layer ids of a four-stage network: ``downsample_layers[i]`` (the stem for i = 0)
    runs before ``stages[i]``; ``depths`` and ``patch_size`` describe it. Shared by ConvNeXt and the roadmap steps.
    """

    @property
    def total_stride(self) -> int:
        return self.patch_size * 2 ** (len(self.depths) - 1)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps after each stage, (N, C_i, H / stride_i, W / stride_i): inputs for FPN-style heads."""
        features = []
        for downsample, stage in zip(self.downsample_layers, self.stages, strict=True):
            x = self._run_blocks(stage, downsample(x))
            features.append(x)
        return features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_chans, H, W) -> (N, num_features, H / total_stride, W / total_stride), before pooling."""
        return self.forward_stages(x)[-1]

    def layer_ids(self, decay_type: str = "group") -> dict[str, int]:
        """Layer id of every parameter for layer-wise lr decay; the head has the largest.

        ``decay_type`` "group": blocks in groups of ``min(depths)`` (the official ConvNeXt table for (3, 3, 27, 3),
        ``layer_ids.block_layer_ids``); "single": every block its own id (ConvNeXt V2's fine-tuning of A/T,
        ``layer_ids.single_layer_ids``).
        """
        if decay_type == "single":
            downsample_ids, block_ids, head_id = single_layer_ids(self.depths)
        else:
            block_ids, head_id = block_layer_ids(self.depths)
            downsample_ids = [0, *(ids[0] for ids in block_ids[1:])]
        ids = {}
        for name, _ in self.named_parameters():
            parts = name.split(".")
            if parts[0] == "downsample_layers":
                ids[name] = downsample_ids[int(parts[1])]
            elif parts[0] == "stages":
                ids[name] = block_ids[int(parts[1])][int(parts[2])]
            else:  # norm, head
                ids[name] = head_id
        return ids


class ConvNeXt(HierarchicalMixin, nn.Module):
    """The hierarchical ConvNeXt: a patchify stem, four stages of blocks, downsampling layers between them.

    Args:
        in_chans: input channels.
        num_classes: classifier outputs; 0 removes the head (``forward`` then returns pooled features).
        depths: blocks per stage.
        dims: channels per stage.
        drop_path_rate: stochastic depth rate of the last block; rates grow linearly from 0 over all blocks.
        layer_scale_init_value: initial layer-scale value (1e-6 in the paper; 0 disables it, as in V2).
        head_init_scale: factor applied to the initial head weights and bias (0.001 when fine-tuning).
        kernel_size: depthwise kernel size.
        patch_size: stem patch size and stride. 4 is the paper's stem (total stride 32). For small images use
            2 or 1: the total stride really drops to 16 or 8, so a 32x32 input ends at 2x2 or 4x4 in stage 4
            (timm's ``patch_size=2`` instead adds a stride elsewhere and keeps 32).
        use_grn: ConvNeXt V2 blocks (global response normalization).
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        depths: Sequence[int] = (3, 3, 9, 3),
        dims: Sequence[int] = (96, 192, 384, 768),
        drop_path_rate: float = 0.0,
        layer_scale_init_value: float = 1e-6,
        head_init_scale: float = 1.0,
        kernel_size: int = 7,
        patch_size: int = 4,
        use_grn: bool = False,
    ):
        super().__init__()
        if len(depths) != len(dims):
            raise ValueError(f"depths {tuple(depths)} and dims {tuple(dims)} must have the same length")
        self.depths, self.dims = tuple(depths), tuple(dims)
        self.num_classes, self.num_features, self.patch_size = num_classes, dims[-1], patch_size

        stem = nn.Sequential(
            nn.Conv2d(in_chans, dims[0], kernel_size=patch_size, stride=patch_size),
            LayerNorm2d(dims[0], eps=LN_EPS),
        )
        self.downsample_layers = nn.ModuleList([stem])
        for i in range(len(dims) - 1):
            self.downsample_layers.append(
                nn.Sequential(LayerNorm2d(dims[i], eps=LN_EPS), nn.Conv2d(dims[i], dims[i + 1], 2, stride=2))
            )

        self.stages = nn.ModuleList()
        for i, block_rates in enumerate(drop_path_rates(drop_path_rate, depths)):
            self.stages.append(
                nn.Sequential(
                    *(Block(dims[i], r, layer_scale_init_value, kernel_size, use_grn) for r in block_rates)
                )
            )

        self.norm = nn.LayerNorm(dims[-1], eps=LN_EPS)  # after global pooling
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(init_weights)
        scale_head(self.head, head_init_scale)


class ConvNeXtIsotropic(ClassifierMixin, nn.Module):
    """Isotropic ConvNeXt (paper Sec. 3.3, the ViT-style comparison): 16x16 patch stem, ``depth`` blocks of one width.

    Follows the official ``convnext_isotropic.py``: no norm after the stem, layer scale off by default.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        depth: int = 18,
        dim: int = 384,
        drop_path_rate: float = 0.0,
        layer_scale_init_value: float = 0.0,
        head_init_scale: float = 1.0,
        kernel_size: int = 7,
        patch_size: int = 16,
        use_grn: bool = False,
    ):
        super().__init__()
        self.depth, self.num_classes, self.num_features, self.patch_size = depth, num_classes, dim, patch_size
        self.stem = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)
        (rates,) = drop_path_rates(drop_path_rate, [depth])
        self.blocks = nn.Sequential(
            *(Block(dim, r, layer_scale_init_value, kernel_size, use_grn) for r in rates)
        )
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(init_weights)
        scale_head(self.head, head_init_scale)

    @property
    def total_stride(self) -> int:
        return self.patch_size

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """A single-scale model: one feature map, (N, dim, H / patch_size, W / patch_size)."""
        return [self._run_blocks(self.blocks, self.stem(x))]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_stages(x)[-1]

    def layer_ids(self, decay_type: str = "group") -> dict[str, int]:
        """Stem 0, block i -> i + 1, final norm and head depth + 1 (the official isotropic rule: every block has
        its own id already, so both decay types give it)."""
        ids = {}
        for name, _ in self.named_parameters():
            parts = name.split(".")
            if parts[0] == "stem":
                ids[name] = 0
            elif parts[0] == "blocks":
                ids[name] = int(parts[1]) + 1
            else:
                ids[name] = self.depth + 1
        return ids
