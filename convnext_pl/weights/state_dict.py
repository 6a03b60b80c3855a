"""The one state-dict mismatch finder: which key of a weights file or checkpoint does not fit a network.

``load_state_dict`` reports every mismatch at once in a message meant for developers; the loaders of released
weights (:mod:`convnext_pl.weights.loading`) and the task modules' ``on_load_checkpoint`` turn the first one
into a sentence a user can act on. Here, not beside the checkpoint callbacks, because models must not import
Lightning.
"""

from collections.abc import Callable, Mapping

import torch


def first_state_mismatch(
    saved: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    selected: Callable[[str], bool] | None = None,
    source: str = "file",
) -> str:
    """The first key, in the model's order, missing from ``saved`` or of another shape; then any key of ``saved``
    the model does not have; an empty string when the two state dicts fit.

    Args:
        saved: the state dict read from a file.
        expected: the model's ``state_dict()``.
        selected: compare only the keys it returns True for (None: every key).
        source: what ``saved`` came from, for the message ("file", "checkpoint").
    """
    selected = selected or (lambda key: True)
    for key, tensor in expected.items():
        if not selected(key):
            continue
        if key not in saved:
            return f"'{key}' is missing from the {source}"
        if tuple(saved[key].shape) != tuple(tensor.shape):
            return (
                f"'{key}' has shape {tuple(saved[key].shape)} in the {source} but {tuple(tensor.shape)} "
                "in the model"
            )
    extra = next((key for key in saved if selected(key) and key not in expected), None)
    return f"'{extra}' in the {source} is not a parameter of the model" if extra else ""
