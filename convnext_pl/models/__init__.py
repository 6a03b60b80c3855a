"""The ConvNeXt model family. Depends on torch and timm's layer helpers only, never on Lightning."""

from convnext_pl.models.convnext import GRN, Block, ConvNeXt, ConvNeXtIsotropic
from convnext_pl.models.fcmae import FCMAE, create_fcmae
from convnext_pl.models.registry import create_model, list_models, register_model
from convnext_pl.roadmap import steps as _roadmap_steps  # noqa: F401  (registers the roadmap_* steps with create_model)

__all__ = [
    "GRN",
    "Block",
    "ConvNeXt",
    "ConvNeXtIsotropic",
    "FCMAE",
    "ModelSummary",
    "create_fcmae",
    "create_model",
    "list_models",
    "load_pretrained",
    "model_summary",
    "register_model",
]


def __getattr__(name: str):
    # `summary` is imported on first use: importing it here would make `python -m convnext_pl.models.summary`
    # find its own module already loaded and print runpy's RuntimeWarning before every run.
    # `pretrained` likewise (python -m convnext_pl.weights list/download).
    if name == "load_pretrained":
        from convnext_pl.weights.loading import load_pretrained

        return load_pretrained
    if name in ("model_summary", "ModelSummary"):
        from convnext_pl.models import summary

        return getattr(summary, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
