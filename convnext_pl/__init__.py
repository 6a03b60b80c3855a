"""convnext-pl: a PyTorch Lightning research template reproducing ConvNeXt (Liu et al., CVPR 2022)."""

__version__ = "0.1.0"

# The task LightningModules, named in YAML as ``model: {class_path: convnext_pl.<name>, init_args: ...}``.
# Imported on first use: ``import convnext_pl.models`` (torch only) must not pay for importing Lightning.
_TASKS = {
    "ImageClassifier": "convnext_pl.tasks.classification",
    "MaskRCNNDetector": "convnext_pl.tasks.detection",
    "MaskedAutoencoderPretrainer": "convnext_pl.tasks.pretraining",
    "SemanticSegmenter": "convnext_pl.tasks.segmentation",
}

__all__ = [*_TASKS]


def __getattr__(name: str):
    if name in _TASKS:
        import importlib

        return getattr(importlib.import_module(_TASKS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
