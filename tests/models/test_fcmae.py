"""FCMAE (ConvNeXt V2's masked autoencoder): the dense masked encoder computes what the official sparse encoder
computes, masked pixels cannot reach a visible output, the loss is the official ``forward_loss``, and the weights
go to and come from the released files' sparse layout.

The sparse reference below is written from the official ``convnextv2_sparse.py`` and MinkowskiEngine's semantics,
not from ``Block._forward_visible``: a map is the coordinates and feature rows of its sites, and every layer reads
and writes those rows only. It uses the FCMAE model's own parameters, read as plain tensors.
"""

import re
import warnings
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F

from convnext_pl.errors import UserError
from convnext_pl.models import create_model, load_pretrained
from convnext_pl.models.fcmae import FCMAE, create_fcmae
from convnext_pl.weights.fcmae import load_fcmae_weights, released_layout

# convnextv2_atto with a 1x1 stem: total stride 8, so a 32x24 image is a 4x3 patch grid and the whole encoder
# runs in well under a second. Not square, to catch a swapped height and width.
STEM_PATCH, HEIGHT, WIDTH = 1, 32, 24
ATTO_DEPTHS, ATTO_DIMS = (2, 2, 6, 2), (40, 80, 160, 320)


def _randomise(net: torch.nn.Module, scale: float = 0.5) -> None:
    """Perturb every parameter, so that nothing passes by sitting at its init: GRN's gamma and beta and all biases
    start at zero, which would make GRN the identity and hide where its norm is taken."""
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn_like(p))


def _masked_fcmae(grn_statistics: str = "batch", **kwargs) -> FCMAE:
    net = create_fcmae("convnextv2_atto", patch_size=STEM_PATCH, grn_statistics=grn_statistics, **kwargs)
    _randomise(net)
    return net.eval()


def _batch(net: FCMAE, n: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.randn(n, 3, HEIGHT, WIDTH)
    return images, net.random_mask(images)


# ------------------------------------------------------------------------------------------ sparse reference
class Sparse(NamedTuple):
    """A sparse map: ``coords`` (M, 3) rows of (image, y, x), ``feats`` (M, C), ``size`` (N, H, W) of the grid."""

    coords: torch.Tensor
    feats: torch.Tensor
    size: tuple[int, int, int]


def _gather(sparse: Sparse, where: torch.Tensor) -> torch.Tensor:
    """Feature rows at the coordinates ``where`` (..., 3); zero where the map has no site (a sparse convolution
    reads nothing there: outside the image or at a masked site)."""
    n, h, w = sparse.size
    row = torch.full((n, h, w), -1, dtype=torch.long)
    row[tuple(sparse.coords.T)] = torch.arange(len(sparse.coords))
    image, y, x = where.unbind(-1)
    inside = (y >= 0) & (y < h) & (x >= 0) & (x < w)
    found = row[image, y.clamp(0, h - 1), x.clamp(0, w - 1)]
    found = torch.where(inside, found, -1)
    return torch.where((found >= 0).unsqueeze(-1), sparse.feats[found.clamp(min=0)], 0.0)


def _sparse_depthwise(sparse: Sparse, conv: torch.nn.Conv2d) -> torch.Tensor:
    """MinkowskiDepthwiseConvolution, stride 1: an output row at every input site (no new sites), the sum over the
    kernel's offsets of the visible neighbours only, plus the bias."""
    k = conv.kernel_size[0]
    dy, dx = torch.meshgrid(torch.arange(k) - k // 2, torch.arange(k) - k // 2, indexing="ij")
    offsets = torch.stack([torch.zeros(k * k, dtype=torch.long), dy.flatten(), dx.flatten()], dim=1)  # (K, 3)
    neighbours = _gather(sparse, sparse.coords[:, None] + offsets)  # (M, K, C)
    kernel = conv.weight.reshape(conv.out_channels, k * k).T  # (C, 1, k, k) -> (K, C), offsets row-major
    return (neighbours * kernel).sum(dim=1) + conv.bias


def _sparse_downsample(sparse: Sparse, layer: torch.nn.Sequential) -> Sparse:
    """MinkowskiLayerNorm on the rows, then MinkowskiConvolution 2x2 stride 2: an output site for every window
    holding an input site, summing the input sites present."""
    norm, conv = layer
    feats = F.layer_norm(sparse.feats, (sparse.feats.shape[1],), norm.weight, norm.bias, norm.eps)
    coords = torch.unique(sparse.coords // torch.tensor([1, 2, 2]), dim=0)
    # (4, 3): the window's offsets, row-major like the kernel's flattened (2, 2)
    offsets = torch.tensor([[0, a, b] for a in range(2) for b in range(2)])
    windows = _gather(sparse._replace(feats=feats), coords[:, None] * torch.tensor([1, 2, 2]) + offsets)
    kernel = conv.weight.flatten(2).permute(2, 1, 0)  # (out, in, 2, 2) -> (4, in, out)
    n, h, w = sparse.size
    return Sparse(coords, torch.einsum("mki,kio->mo", windows, kernel) + conv.bias, (n, h // 2, w // 2))


def _sparse_grn(
    feats: torch.Tensor, image: torch.Tensor, n: int, gamma, beta, over_batch: bool
) -> torch.Tensor:
    """MinkowskiGRN (``over_batch``: one L2 norm over every row of the batch, ``torch.norm(x.F, dim=0)``) or the
    dense GRN's per-image norm, here over each image's visible rows."""
    if over_batch:
        norm = feats.norm(dim=0, keepdim=True)  # (1, C)
    else:
        squares = torch.zeros(n, feats.shape[1], dtype=feats.dtype).index_add_(0, image, feats**2)
        norm = squares.sqrt()[image]  # (M, C): each row's own image
    scale = norm / (norm.mean(dim=-1, keepdim=True) + 1e-6)  # the official eps
    return gamma.reshape(-1) * (feats * scale) + beta.reshape(-1) + feats


def _sparse_block(sparse: Sparse, block, over_batch: bool) -> Sparse:
    """The official sparse V2 block: dwconv, LN, Linear, GELU, GRN, Linear, residual (no layer scale in V2)."""
    x = _sparse_depthwise(sparse, block.dwconv)
    x = F.layer_norm(x, (x.shape[1],), block.norm.weight, block.norm.bias, block.norm.eps)
    x = F.gelu(F.linear(x, block.pwconv1.weight, block.pwconv1.bias))
    x = _sparse_grn(x, sparse.coords[:, 0], sparse.size[0], block.grn.gamma, block.grn.beta, over_batch)
    x = F.linear(x, block.pwconv2.weight, block.pwconv2.bias)
    return sparse._replace(feats=sparse.feats + x)


def sparse_encoder(net: FCMAE, images: torch.Tensor, mask: torch.Tensor, over_batch: bool) -> Sparse:
    """``SparseConvNeXtV2.forward``: the dense stem, ``x *= 1 - mask`` at the stem's resolution, ``to_sparse``
    (a site wherever a channel is non-zero), then the stages on the sites."""
    encoder = net.encoder
    scale = 2 ** (len(encoder.stages) - 1)
    visible = 1.0 - mask.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
    x = encoder.downsample_layers[0](images) * visible.unsqueeze(1).to(images.dtype)
    coords = x.ne(0).any(dim=1).nonzero()  # (M, 3)
    sparse = Sparse(coords, x.permute(0, 2, 3, 1)[tuple(coords.T)], (x.shape[0], *x.shape[2:]))
    for i, stage in enumerate(encoder.stages):
        if i > 0:
            sparse = _sparse_downsample(sparse, encoder.downsample_layers[i])
        for block in stage:
            sparse = _sparse_block(sparse, block, over_batch)
    return sparse


def _dense(sparse: Sparse) -> torch.Tensor:
    """``SparseTensor.dense()``: (N, C, H, W), zeros where there is no site."""
    out = torch.zeros(*sparse.size, sparse.feats.shape[1], dtype=sparse.feats.dtype)
    out[tuple(sparse.coords.T)] = sparse.feats
    return out.permute(0, 3, 1, 2)


# ------------------------------------------------------------------------------ the encoder against the reference
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("grn_statistics", ["batch", "image"])
def test_masked_encoder_equals_the_sparse_reference(grn_statistics, dtype):
    net = _masked_fcmae(grn_statistics).to(dtype)
    images, mask = _batch(net)
    images = images.to(dtype)
    with torch.no_grad():
        dense = net.forward_encoder(images, mask)
        sparse = sparse_encoder(net, images, mask, over_batch=grn_statistics == "batch")
    # The reference's last-stage sites are exactly the visible patches: the sparse downsampling made no site from a
    # masked window and lost none.
    assert torch.equal(sparse.coords, (mask == 0).nonzero())
    reference = _dense(sparse)
    visible = (mask == 0).unsqueeze(1).expand_as(dense)
    assert torch.count_nonzero(dense[~visible]) == 0, "the dense encoder wrote at masked patches"
    diff = (dense - reference).abs().max().item()
    scale = reference.abs().max().item()
    # float64 leaves only rounding (about 1e-16 relative); float32 rounding through 12 blocks stays near 1e-6.
    tolerance = 1e-12 if dtype == torch.float64 else 1e-4
    print(f"\n{grn_statistics} {dtype}: max |dense - sparse| = {diff:.3e} (max |output| {scale:.3e})")
    assert diff <= tolerance * scale, f"max |dense - sparse| = {diff:.3e}, max |output| = {scale:.3e}"


def test_batch_and_image_grn_statistics_give_different_encoders():
    # The reference comparison above could not tell the two statistics apart if they agreed on this batch.
    net = _masked_fcmae("batch").double()
    images, mask = _batch(net)
    images = images.double()
    with torch.no_grad():
        over_batch = net.forward_encoder(images, mask)
        net.grn_statistics = "image"
        per_image = net.forward_encoder(images, mask)
    gap = (over_batch - per_image).abs().max().item()
    print(f"\nmax |batch - image| = {gap:.3e}")
    assert gap > 1e-3 * over_batch.abs().max().item(), f"max |batch - image| = {gap:.3e}"


# ---------------------------------------------------------------------------- masked pixels cannot leak
def test_visible_outputs_have_no_gradient_at_masked_pixels():
    net = _masked_fcmae()
    images, mask = _batch(net)
    images.requires_grad_(True)
    features = net.forward_encoder(images, mask)
    (features * torch.randn_like(features)).sum().backward()
    masked = net.pixel_mask(mask).bool().expand_as(images)
    assert torch.count_nonzero(images.grad[masked]) == 0
    assert torch.count_nonzero(images.grad[~masked]) > 0.9 * (~masked).sum()  # the visible pixels are read


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train_drop_path"])
def test_noise_in_the_masked_pixels_leaves_the_output_bit_identical(train):
    net = _masked_fcmae(drop_path_rate=0.3 if train else None).train(train)
    images, mask = _batch(net)
    noisy = torch.where(net.pixel_mask(mask).bool(), 10.0 * torch.randn_like(images), images)

    def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(1)  # the same drop-path draws for both inputs
        features = net.forward_encoder(x, mask)
        return features, net.forward_decoder(features, mask)

    with torch.no_grad():
        clean, noise = run(images), run(noisy)
        assert torch.equal(clean[0], noise[0]) and torch.equal(clean[1], noise[1])
        if train:  # drop path did act: the train-mode output is not the eval-mode one
            assert not torch.equal(clean[0], net.eval().forward_encoder(images, mask))


# --------------------------------------------------------------------------------- loss, mask, patches
def official_forward_loss(imgs, pred, mask, patch_size: int, norm_pix_loss: bool) -> torch.Tensor:
    """The official ``FCMAE.forward_loss`` (with its ``patchify``), for square images and a mask (N, L)."""
    n, c, _, _ = pred.shape
    pred = torch.einsum("ncl->nlc", pred.reshape(n, c, -1))
    p, h = patch_size, imgs.shape[2] // patch_size
    target = torch.einsum("nchpwq->nhwpqc", imgs.reshape(imgs.shape[0], 3, h, p, h, p))
    target = target.reshape(imgs.shape[0], h * h, p**2 * 3)
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    loss = ((pred - target) ** 2).mean(dim=-1)  # (N, L), mean loss per patch
    return (loss * mask).sum() / mask.sum()  # mean loss on removed patches


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_loss_is_the_official_forward_loss(norm_pix_loss):
    net = create_fcmae("convnextv2_atto", patch_size=STEM_PATCH, norm_pix_loss=norm_pix_loss)
    images = torch.randn(4, 3, 32, 32)
    mask = net.random_mask(images)
    pred = torch.randn(4, net.patch_size**2 * 3, 4, 4)
    expected = official_forward_loss(images, pred, mask.flatten(1), net.patch_size, norm_pix_loss)
    torch.testing.assert_close(net.loss(images, pred, mask), expected, rtol=1e-6, atol=0.0)
    # A prediction changed at visible patches only leaves the loss as it was: it counts masked patches.
    changed = pred + 5.0 * (1.0 - mask).unsqueeze(1)
    torch.testing.assert_close(net.loss(images, changed, mask), expected, rtol=1e-6, atol=0.0)


@pytest.mark.parametrize("mask_ratio", [0.6, 0.75, 0.5])
def test_random_mask_keeps_exactly_int_L_times_one_minus_ratio_patches(mask_ratio):
    net = create_fcmae("convnextv2_atto", patch_size=STEM_PATCH, mask_ratio=mask_ratio)
    images = torch.zeros(16, 3, 56, 56)  # a 7x7 grid, L = 49: int(L * (1 - ratio)) rounds down
    mask = net.random_mask(images)
    patches = 7 * 7
    assert mask.shape == (16, 7, 7) and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert (mask.flatten(1).sum(1) == patches - int(patches * (1 - mask_ratio))).all()
    assert len({tuple(m.flatten().tolist()) for m in mask}) > 1  # each image draws its own mask
    first, again = (net.random_mask(images, torch.Generator().manual_seed(3)) for _ in range(2))
    assert torch.equal(first, again)


def test_patchify_order_and_its_inverse():
    net = create_fcmae("convnextv2_atto", patch_size=STEM_PATCH)  # patch 8
    images = torch.randn(2, 3, HEIGHT, WIDTH)  # grid 4 x 3
    patches = net.patchify(images)
    assert patches.shape == (2, 4 * 3, 8 * 8 * 3)
    # Pixel (c, y, x) sits in patch (y // p) * w + x // p at ((y % p) * p + x % p) * C + c: row, column, channel.
    c, y, x, p = 2, 13, 22, 8
    assert patches[1, (y // p) * 3 + x // p, ((y % p) * p + x % p) * 3 + c] == images[1, c, y, x]
    assert torch.equal(net.unpatchify(patches, (4, 3)), images)


# ---------------------------------------------------------------------------------- the released layout
def official_fcmae_shapes(depths, dims, decoder_dim=512, patch=32, in_chans=3) -> dict[str, tuple]:
    """Every tensor of the official ``FCMAE`` (``models/fcmae.py`` over ``convnextv2_sparse.py``) and its shape:
    MinkowskiConvolution kernels (volume, in, out) and biases (1, out), depthwise kernels (volume, C), the
    Minkowski wrappers' ``.ln``/``.linear``, MinkowskiGRN (1, C); the stem and the decoder are dense modules."""
    shapes = {
        "encoder.downsample_layers.0.0.weight": (dims[0], in_chans, 4, 4),
        "encoder.downsample_layers.0.0.bias": (dims[0],),
        "encoder.downsample_layers.0.1.weight": (dims[0],),
        "encoder.downsample_layers.0.1.bias": (dims[0],),
    }
    for i in range(1, len(dims)):
        layer = f"encoder.downsample_layers.{i}"
        shapes |= {f"{layer}.0.ln.weight": (dims[i - 1],), f"{layer}.0.ln.bias": (dims[i - 1],)}
        shapes |= {f"{layer}.1.kernel": (4, dims[i - 1], dims[i]), f"{layer}.1.bias": (1, dims[i])}
    blocks = [(f"encoder.stages.{i}.{j}", dims[i]) for i, depth in enumerate(depths) for j in range(depth)]
    blocks += [(f"decoder.{j}", decoder_dim) for j in range(1)]
    for block, c in blocks:
        sparse = block.startswith("encoder.")
        ln, linear = (".ln", ".linear") if sparse else ("", "")
        shapes |= {
            f"{block}.dwconv.{'kernel' if sparse else 'weight'}": (49, c) if sparse else (c, 1, 7, 7),
            f"{block}.dwconv.bias": (1, c) if sparse else (c,),
            f"{block}.norm{ln}.weight": (c,),
            f"{block}.norm{ln}.bias": (c,),
            f"{block}.pwconv1{linear}.weight": (4 * c, c),
            f"{block}.pwconv1{linear}.bias": (4 * c,),
            f"{block}.grn.gamma": (1, 4 * c) if sparse else (1, 1, 1, 4 * c),
            f"{block}.grn.beta": (1, 4 * c) if sparse else (1, 1, 1, 4 * c),
            f"{block}.pwconv2{linear}.weight": (c, 4 * c),
            f"{block}.pwconv2{linear}.bias": (c,),
        }
    return shapes | {
        "proj.weight": (decoder_dim, dims[-1], 1, 1),
        "proj.bias": (decoder_dim,),
        "mask_token": (1, decoder_dim, 1, 1),
        "pred.weight": (patch**2 * in_chans, decoder_dim, 1, 1),
        "pred.bias": (patch**2 * in_chans,),
    }


@pytest.fixture
def atto_fcmae() -> FCMAE:
    """The paper's FCMAE around convnextv2_atto (4x4 stem, 32-pixel patches, a 512-wide decoder), randomised."""
    net = create_fcmae("convnextv2_atto")
    _randomise(net)
    return net


def _save(tmp_path, state: dict, name: str = "convnextv2_atto_1k_224_fcmae.pt", wrapper: str = "model"):
    path = tmp_path / name
    torch.save({wrapper: state}, path)
    return path


def _equal_states(loaded: dict, expected: dict) -> bool:
    return loaded.keys() == expected.keys() and all(torch.equal(loaded[k], v) for k, v in expected.items())


def test_released_layout_has_the_official_shapes_and_loads_back_strictly(atto_fcmae, tmp_path):
    state = atto_fcmae.state_dict()
    released = released_layout(state)
    shapes = {k: tuple(v.shape) for k, v in released.items()}
    assert shapes == official_fcmae_shapes(ATTO_DEPTHS, ATTO_DIMS)
    path = _save(tmp_path, released)
    fresh = create_fcmae("convnextv2_atto")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a complete file loads without a word
        load_fcmae_weights(fresh, path)
    assert _equal_states(fresh.state_dict(), state)


def test_this_projects_pretraining_checkpoint_loads_into_fcmae(atto_fcmae, tmp_path):
    state = atto_fcmae.state_dict()
    path = _save(tmp_path, {"net." + k: v for k, v in state.items()}, "last.ckpt", wrapper="state_dict")
    fresh = create_fcmae("convnextv2_atto")
    load_fcmae_weights(fresh, path)
    assert _equal_states(fresh.state_dict(), state)


def test_a_file_missing_a_decoder_key_is_refused_by_name(atto_fcmae, tmp_path):
    released = released_layout(atto_fcmae.state_dict())
    del released["pred.bias"]
    with pytest.raises(UserError, match=re.escape("'pred.bias' is missing")):
        load_fcmae_weights(create_fcmae("convnextv2_atto"), _save(tmp_path, released))


def test_a_file_of_another_variant_is_refused_by_name(tmp_path):
    femto = released_layout(create_fcmae("convnextv2_femto").state_dict())
    # The first key in the model's order that does not fit is named: the stem, 48 channels in femto, 40 in atto.
    with pytest.raises(
        UserError, match=re.escape("'encoder.downsample_layers.0.0.weight' has shape (48, 3, 4, 4)")
    ):
        load_fcmae_weights(create_fcmae("convnextv2_atto"), _save(tmp_path, femto))


def test_an_encoder_only_file_loads_the_encoder_and_keeps_the_decoder(tmp_path):
    classifier = create_model("convnextv2_atto", num_classes=10)
    _randomise(classifier)
    path = tmp_path / "convnextv2_atto_classifier.pth"
    torch.save(classifier.state_dict(), path)
    net = create_fcmae("convnextv2_atto")
    before = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("encoder.")}
    with pytest.warns(UserWarning, match="encoder without the FCMAE decoder"):
        load_fcmae_weights(net, path)
    state = net.state_dict()
    encoder = {k: v for k, v in classifier.state_dict().items() if not k.startswith(("norm.", "head."))}
    assert _equal_states(
        {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}, encoder
    )
    assert _equal_states({k: v for k, v in state.items() if not k.startswith("encoder.")}, before)


@pytest.mark.parametrize("layout", ["released", "lightning"])
def test_the_classifier_fine_tunes_from_the_fcmae_encoder(atto_fcmae, tmp_path, layout):
    state = atto_fcmae.state_dict()
    if layout == "released":
        path = _save(tmp_path, released_layout(state))
    else:
        path = _save(tmp_path, {"net." + k: v for k, v in state.items()}, "last.ckpt", wrapper="state_dict")
    classifier = create_model("convnextv2_atto", num_classes=10)
    with pytest.warns(UserWarning, match="head was re-initialised"):
        load_pretrained(classifier, path, replace_head=True)
    loaded = {k: v for k, v in classifier.state_dict().items() if not k.startswith(("norm.", "head."))}
    encoder = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    assert _equal_states(loaded, encoder)
