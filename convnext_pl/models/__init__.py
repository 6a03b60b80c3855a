"""The ConvNeXt model family. Depends on torch and timm's layer helpers only, never on Lightning."""

from convnext_pl.models import roadmap  # noqa: F401  (registers the roadmap_* steps with create_model)
from convnext_pl.models.convnext import GRN, Block, ConvNeXt, ConvNeXtIsotropic
from convnext_pl.models.registry import create_model, list_models, register_model

__all__ = ["GRN", "Block", "ConvNeXt", "ConvNeXtIsotropic", "create_model", "list_models", "register_model"]
