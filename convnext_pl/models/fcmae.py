"""FCMAE, ConvNeXt V2's fully convolutional masked autoencoder (Woo et al., CVPR 2023, Sec. 3), dense, on PyTorch.

The official encoder is sparse (MinkowskiEngine, which no longer installs on current PyTorch): it keeps only the
visible sites of the image, so a masked patch can never leak into a visible one. The paper notes that a sparse
convolution is a dense convolution with the mask applied to its input and output; this module writes that out for
every layer whose output depends on more than one site (``Block(x, keep)`` in ``convnext.py`` is the block's form):

- the depthwise 7x7 convolution reads zeros where the sparse tensor has no site (the input is zero at masked
  sites); its output, bias included, exists only at visible sites: the block's output is multiplied by the keep
  map, and nothing between mixes sites except GRN, whose input is masked too;
- GRN's L2 norm runs over the visible sites only, which the zeroed input gives for free;
- a downsampling 2x2/2 convolution sees either four visible or four masked sites, because a masked patch (the
  encoder's total stride, 32 pixels for the paper's stem) covers whole windows at every stage; its output is masked;
- per-site layers (LayerNorm, the pointwise Linears, GELU) need nothing: what they write at masked sites is
  removed before the next layer that mixes sites.

``tests/models/test_fcmae.py`` checks it against a sparse reference that computes each stage on the visible sites
only. The dense form computes every site: 1 / (1 - mask_ratio) times the sparse encoder's work, 2.5x at the
paper's 0.6 (``benchmarks/fcmae_step.py`` measures the step time).

Parameter names are the official ``FCMAE``'s (``encoder.*``, ``proj``, ``mask_token``, ``decoder.*``, ``pred``),
the encoder's in the dense V2 layout; :mod:`convnext_pl.weights.fcmae` maps the released files' sparse layout.
"""

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn as nn
from timm.layers import trunc_normal_
from torch.utils.checkpoint import checkpoint
from torchvision.utils import make_grid

from convnext_pl.errors import UserError
from convnext_pl.models.convnext import Block, ConvNeXt
from convnext_pl.models.registry import create_model

# Which sites GRN's global norm runs over. "batch" is the official sparse encoder: MinkowskiGRN takes the norm
# over every visible site of the (per-device) batch at once, not per image (ConvNeXt-V2#86, open), and the
# released FCMAE weights were pre-trained with it. "image" is the dense V2 block's per-image norm, which
# fine-tuning and every dense use of the encoder apply.
GRNStatistics = Literal["batch", "image"]


class FCMAE(nn.Module):
    """A ConvNeXt encoder that sees only the visible patches, a one-block ConvNeXt V2 decoder, a pixel predictor.

    Args:
        encoder: the ConvNeXt to pre-train (V2 blocks in the paper); its final norm and head are removed. Its total
            stride is the mask's patch size (32 with the paper's 4x4 stem).
        decoder_depth: decoder blocks (paper: 1).
        decoder_dim: decoder channels (paper: 512).
        mask_ratio: fraction of patches masked per image (paper: 0.6).
        norm_pix_loss: predict each patch's pixels normalised by the patch's mean and std (official pre-training
            commands: on).
        grn_statistics: where the encoder's GRN takes its norm while masked (see :data:`GRNStatistics`).
    """

    def __init__(
        self,
        encoder: ConvNeXt,
        decoder_depth: int = 1,
        decoder_dim: int = 512,
        mask_ratio: float = 0.6,
        norm_pix_loss: bool = True,
        grn_statistics: GRNStatistics = "batch",
    ):
        super().__init__()
        if not 0.0 < mask_ratio < 1.0:
            raise UserError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        encoder.norm, encoder.head, encoder.num_classes = nn.Identity(), nn.Identity(), 0  # not in FCMAE
        self.encoder = encoder
        self.patch_size = encoder.total_stride
        self.in_chans = encoder.downsample_layers[0][0].in_channels
        self.mask_ratio, self.norm_pix_loss, self.grn_statistics = mask_ratio, norm_pix_loss, grn_statistics
        self.proj = nn.Conv2d(encoder.num_features, decoder_dim, kernel_size=1)
        self.mask_token = nn.Parameter(torch.zeros(1, decoder_dim, 1, 1))
        self.decoder = nn.Sequential(
            *(Block(decoder_dim, layer_scale_init_value=0.0, use_grn=True) for _ in range(decoder_depth))
        )
        self.pred = nn.Conv2d(decoder_dim, self.patch_size**2 * self.in_chans, kernel_size=1)
        self._official_init()

    # ------------------------------------------------------------------------------------------ masking
    def random_mask(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A random mask per image, (N, h, w) with 1 where the patch is masked, h x w the patch grid; exactly
        ``int(L * (1 - mask_ratio))`` of the L patches stay visible (official ``gen_random_mask``)."""
        n, h, w = images.shape[0], *self.patch_grid(images)
        patches = h * w
        keep = int(patches * (1 - self.mask_ratio))
        # Drawn where the generator lives (a CPU generator gives the same masks on every device).
        noise = torch.randn(
            n, patches, generator=generator, device=generator.device if generator else images.device
        )
        noise = noise.to(images.device)
        order = torch.argsort(noise, dim=1)  # the `keep` lowest noises stay visible
        mask = torch.ones(n, patches, device=images.device)
        mask.scatter_(1, order[:, :keep], 0.0)
        return mask.reshape(n, h, w)

    def patch_grid(self, images: torch.Tensor) -> tuple[int, int]:
        """The patch grid (h, w) of an image batch; every side must be a multiple of the patch size."""
        height, width = images.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise UserError(
                f"FCMAE needs image sides that are multiples of its patch size {self.patch_size} (the encoder's "
                f"total stride); got {height}x{width}"
            )
        return height // self.patch_size, width // self.patch_size

    # ---------------------------------------------------------------------------------------- the network
    def forward_encoder(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) images and an (N, h, w) mask -> the encoder's last map (N, dim, h, w), zero where masked
        (what the sparse encoder's ``dense()`` returns)."""
        keep = (1.0 - mask).unsqueeze(1).to(images.dtype)  # (N, 1, h, w): 1 where visible
        stages, over_batch = len(self.encoder.stages), self.grn_statistics == "batch"
        x = images
        for i, (downsample, stage) in enumerate(
            zip(self.encoder.downsample_layers, self.encoder.stages, strict=True)
        ):
            scale = 2 ** (stages - 1 - i)  # stage i's map is `scale` times the patch grid
            stage_keep = keep.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
            x = downsample(x) * stage_keep
            for block in stage:  # called as modules, so FSDP2's per-block hooks run
                if self.encoder.grad_checkpointing and torch.is_grad_enabled():
                    x = checkpoint(block, x, stage_keep, over_batch, use_reentrant=False)
                else:
                    x = block(x, stage_keep, over_batch)
        return x

    def forward_decoder(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The encoder's map and the mask -> predicted pixels (N, patch_size**2 * in_chans, h, w); the masked sites
        carry the learned mask token into the decoder."""
        x = self.proj(features)
        masked = mask.unsqueeze(1).to(x.dtype)
        x = x * (1.0 - masked) + self.mask_token.to(x.dtype) * masked
        return self.pred(self.decoder(x))

    def forward(
        self, images: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(loss, pred, mask)`` as the official ``FCMAE.forward``; ``mask`` None draws one (:meth:`random_mask`)."""
        if mask is None:
            mask = self.random_mask(images)
        pred = self.forward_decoder(self.forward_encoder(images, mask), mask)
        return self.loss(images, pred, mask), pred, mask

    # ------------------------------------------------------------------------------------ loss and pixels
    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, L, p * p * C), pixels in the official order (row, column, channel)."""
        n, c = images.shape[:2]
        (h, w), p = self.patch_grid(images), self.patch_size
        x = images.reshape(n, c, h, p, w, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(n, h * w, p * p * c)

    def unpatchify(self, patches: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """The inverse of :meth:`patchify` for a patch grid (h, w)."""
        (h, w), p, c = grid, self.patch_size, self.in_chans
        x = patches.reshape(patches.shape[0], h, w, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(patches.shape[0], c, h * p, w * p)

    def loss(self, images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error on the masked patches (official ``forward_loss``), on per-patch normalised pixels
        when ``norm_pix_loss``."""
        pred = pred.flatten(2).transpose(1, 2)  # (N, p*p*C, h, w) -> (N, L, p*p*C)
        target = self.patchify(images)
        if self.norm_pix_loss:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        per_patch = ((pred.float() - target.float()) ** 2).mean(dim=-1)  # (N, L)
        mask = mask.flatten(1).to(per_patch.dtype)
        return (per_patch * mask).sum() / mask.sum()

    def reconstruct(self, images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The prediction as an image batch (N, C, H, W) in the input's units: per-patch normalised predictions
        get each patch's own mean and std back (the visualisation of MAE's demo)."""
        grid = self.patch_grid(images)
        pred = pred.flatten(2).transpose(1, 2).float()
        if self.norm_pix_loss:
            target = self.patchify(images).float()
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            pred = pred * (var + 1.0e-6) ** 0.5 + mean
        return self.unpatchify(pred, grid).to(images.dtype)

    def pixel_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """The (N, h, w) patch mask at pixel resolution, (N, 1, H, W)."""
        p = self.patch_size
        return mask.repeat_interleave(p, dim=1).repeat_interleave(p, dim=2).unsqueeze(1)

    # --------------------------------------------------------------------------------- initialisation
    def _official_init(self) -> None:
        """The official ``FCMAE._init_weights``, applied after the encoder's own init as there. It uses timm's
        ``trunc_normal_`` without a std (so 1.0) for every ``nn.Conv2d`` (stem, ``proj``, ``pred``, the decoder's
        depthwise conv) and for the sparse encoder's depthwise kernels and Linears; std 0.02 for the sparse
        downsampling convolutions; PyTorch's default for the decoder's Linears; zero biases; ``mask_token``
        normal with std 0.02. Reproduced as released, since the released weights were trained from it."""
        encoder_linears = {
            id(m) for stage in self.encoder.stages for m in stage.modules() if isinstance(m, nn.Linear)
        }
        downsample_convs = {id(layer[1]) for layer in list(self.encoder.downsample_layers)[1:]}
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                weight = module.weight.data.view(module.weight.shape[0], -1)
                trunc_normal_(weight, std=0.02 if id(module) in downsample_convs else 1.0)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear) and id(module) in encoder_linears:
                trunc_normal_(module.weight, std=1.0)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.mask_token, std=0.02)


def reconstruction_picture(
    net: FCMAE,
    images: torch.Tensor,
    pred: torch.Tensor,
    mask: torch.Tensor,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    min_side: int = 96,
) -> torch.Tensor:
    """What FCMAE saw and made, as one (3, H', W') picture in [0, 1]: a column per image of the original, the
    masked input (masked patches grey) and the reconstruction with the visible patches pasted back (MAE's
    visualisation).

    Args:
        net, images, pred, mask: the network, its input batch and what ``net(images)`` returned.
        mean, std: the normalisation the images carry (per channel), undone for display; None: none.
        min_side: images smaller than this are enlarged by whole pixels, so the patches stay sharp.
    """
    with torch.no_grad():
        masked = net.pixel_mask(mask).to(images.dtype)
        pasted = images * (1 - masked) + net.reconstruct(images, pred, mask) * masked
        rows = [_display_pixels(x, mean, std) for x in (images, images, pasted)]
        rows[1] = rows[1] * (1 - masked) + 0.5 * masked
    picture = torch.cat(rows).float().cpu()
    scale = max(1, -(-min_side // picture.shape[-1]))
    picture = picture.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    return make_grid(picture, nrow=images.shape[0], padding=2, pad_value=1.0)


def _display_pixels(
    images: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None
) -> torch.Tensor:
    images = images.float()
    if mean is not None and std is not None:
        shape = (1, -1, 1, 1)
        images = images * torch.as_tensor(std, device=images.device).reshape(shape).float()
        images = images + torch.as_tensor(mean, device=images.device).reshape(shape).float()
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return images.clamp(0.0, 1.0)


def create_fcmae(
    name: str = "convnextv2_base",
    decoder_depth: int = 1,
    decoder_dim: int = 512,
    mask_ratio: float = 0.6,
    norm_pix_loss: bool = True,
    grn_statistics: GRNStatistics = "batch",
    drop_path_rate: float | None = None,
    patch_size: int | None = None,
    in_chans: int = 3,
) -> FCMAE:
    """FCMAE around a registered ConvNeXt (``convnextv2_atto`` ... ``convnextv2_huge`` in the paper).

    Args:
        name: the encoder, one of ``convnext_pl.models.list_models()``.
        decoder_depth, decoder_dim, mask_ratio, norm_pix_loss, grn_statistics: see :class:`FCMAE`.
        drop_path_rate: the encoder's stochastic depth (official pre-training: 0).
        patch_size: the encoder's stem patch (None: 4, the paper's, giving 32-pixel mask patches; 2 or 1 for small
            images, giving 16 or 8). Fine-tuning must build the classifier with the same stem.
        in_chans: image channels.
    """
    encoder = create_model(
        name, num_classes=0, in_chans=in_chans, drop_path_rate=drop_path_rate, patch_size=patch_size
    )
    if not isinstance(encoder, ConvNeXt):
        raise UserError(f"FCMAE needs a hierarchical ConvNeXt encoder; {name} is a {type(encoder).__name__}")
    return FCMAE(encoder, decoder_depth, decoder_dim, mask_ratio, norm_pix_loss, grn_statistics)
