"""Whole-image, sliding-window and multi-scale + flip inference of the segmentation task."""

import pytest
import torch
import torch.nn as nn

from convnext_pl.models.upernet import create_upernet
from convnext_pl.tasks.segmentation_inference import segment, slide_scores


def _pointwise_net() -> nn.Module:
    # A 1x1 conv sees no context: any tiling of the image gives the whole image's scores exactly.
    return nn.Conv2d(3, 4, kernel_size=1)


@pytest.mark.parametrize(
    "size", [(13, 17), (16, 16), (37, 29)]
)  # smaller than, equal to, larger than the crop
def test_slide_covers_every_pixel_with_the_window_scores(size):
    net, images = _pointwise_net(), torch.randn(2, 3, *size)
    with torch.no_grad():
        scores = slide_scores(net, images, crop=(16, 16), stride=(11, 11))
        assert scores.shape == (2, 4, *size)
        torch.testing.assert_close(scores, net(images))


def test_slide_equals_whole_when_one_window_covers_the_image():
    net = create_upernet("convnext_atto", num_classes=3, channels=16, aux_channels=0).eval()
    images = torch.randn(1, 3, 45, 39)  # odd sizes, inside one 48x48 window
    with torch.no_grad():
        whole = segment(net, images, "whole")
        slide = segment(net, images, "slide", crop=(48, 48), stride=(32, 32))
    torch.testing.assert_close(slide, whole)
    torch.testing.assert_close(whole.sum(dim=1), torch.ones(1, 45, 39))  # probabilities


def test_slide_on_a_larger_image_uses_overlapping_windows():
    net = create_upernet("convnext_atto", num_classes=3, channels=16, aux_channels=0).eval()
    calls = []
    net.register_forward_hook(lambda module, args, out: calls.append(tuple(args[0].shape[-2:])))
    with torch.no_grad():
        probs = segment(net, torch.randn(1, 3, 70, 33), "slide", crop=(32, 32), stride=(21, 21))
    assert probs.shape == (1, 3, 70, 33)
    assert calls == [(32, 32)] * 6  # rows at 0, 21, 38 (flush with the bottom); columns at 0 and 1


def test_multi_scale_and_flip_average_probabilities():
    net, images = _pointwise_net(), torch.randn(1, 3, 20, 24)
    with torch.no_grad():
        single = segment(net, images)
        both = segment(net, images, scales=(1.0,), flip=True)
        scaled = segment(net, images, scales=(0.5, 1.0, 1.5), flip=True)
    torch.testing.assert_close(both, single)  # a mirrored pointwise net gives the same result
    assert scaled.shape == single.shape
    torch.testing.assert_close(scaled.sum(dim=1), torch.ones(1, 20, 24))


def test_unknown_mode():
    with pytest.raises(ValueError, match="whole"):
        segment(_pointwise_net(), torch.randn(1, 3, 8, 8), "tiles")
