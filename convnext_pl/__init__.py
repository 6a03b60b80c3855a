"""convnext-pl: a PyTorch Lightning research template reproducing ConvNeXt (Liu et al., CVPR 2022)."""

__version__ = "0.1.0"
