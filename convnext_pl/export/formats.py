"""Export a trained network for inference: ONNX, TorchScript or safetensors.

``python -m convnext_pl.export --ckpt runs/digits/version_0/checkpoints/last.ckpt --format onnx --out digits.onnx``
``python -m convnext_pl.export predict digits.onnx --images my_images/ --output predictions.csv`` (ONNX Runtime,
:mod:`convnext_pl.export.onnx_predict`: the ONNX export records the data's evaluation transform and class names for it)

The network is rebuilt from the checkpoint's own ``hyper_parameters`` (the ``model.net`` config the CLI recorded),
loaded with the checkpoint's ``state_dict`` and exported in eval mode, without the LightningModule around it.
When training used the ``EMA`` callback, ``state_dict`` of ``last.ckpt`` and of the best-EMA file (``ema-*.ckpt``)
holds the EMA weights (the raw ones are kept under ``current_model_state``), so their export is the EMA model, the
one the paper evaluates; the best-raw file (``raw-*.ckpt``) holds the raw weights (see ``ResumableCheckpoint``).
"""

import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
from lightning.pytorch.cli import instantiate_class
from safetensors.torch import save_file

from convnext_pl.data.augment.transform_spec import describe_transform
from convnext_pl.data.base import ClassificationDataModule
from convnext_pl.errors import OneLineArgumentParser, UserError, one_line_errors
from convnext_pl.export.onnx_predict import CLASS_NAMES_KEY, DATA_KEY, PREPROCESSING_KEY

FORMATS = ("onnx", "torchscript", "safetensors")
DEFAULT_IMAGE_SIZE = 224  # used when the checkpoint does not record its data's image size
# A protobuf message (one .onnx file) cannot exceed 2 GiB; keep a margin for the graph itself.
ONNX_SINGLE_FILE_BYTES = 1_800_000_000
_NET_PREFIX = "net."  # ImageClassifier stores the network as `self.net`


def load_network(ckpt_path: str | Path) -> tuple[nn.Module, dict]:
    """The network of a Lightning checkpoint written by this project's CLI, in eval mode on the CPU.

    Args:
        ckpt_path: a ``.ckpt`` file from ``python main.py fit``.

    Returns:
        ``(net, checkpoint)``: the network with the checkpoint's ``state_dict`` weights (EMA ones in ``last.ckpt``
        and ``ema-*.ckpt`` when the EMA callback was on) and the loaded checkpoint, for its other entries.

    Raises:
        UserError: the file is missing, unreadable, or holds no network config or weights.
    """
    path = Path(ckpt_path)
    if not path.is_file():
        raise UserError(
            f"Checkpoint {path} does not exist; pass a .ckpt file from runs/<name>/version_N/checkpoints."
        )
    try:
        # weights_only: a checkpoint from elsewhere must not run code; the CLI's checkpoints hold plain data.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise UserError(
            f"Checkpoint {path} could not be read as a Lightning checkpoint; check that the file is complete and "
            "was written by `python main.py fit`."
        ) from error
    net_config = checkpoint.get("hyper_parameters", {}).get("net") if isinstance(checkpoint, dict) else None
    if not isinstance(net_config, dict) or "class_path" not in net_config:
        raise UserError(
            f"Checkpoint {path} records no network config (model.net); export needs a checkpoint written by "
            "`python main.py fit`, which saves it."
        )
    net = instantiate_class((), net_config)
    state = {
        key.removeprefix(_NET_PREFIX): value
        for key, value in checkpoint.get("state_dict", {}).items()
        if key.startswith(_NET_PREFIX)
    }
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        first = (missing or unexpected)[0]
        raise UserError(
            f"Checkpoint {path} does not match its own network config ('{first}' is "
            f"{'missing' if missing else 'unexpected'}); the file is damaged or was edited."
        )
    if hasattr(net, "set_grad_checkpointing"):
        net.set_grad_checkpointing(False)  # inference graphs never recompute
    return net.eval(), checkpoint


def recorded_image_size(checkpoint: dict) -> int | None:
    """The image size the run's data module was configured with, if the checkpoint records it."""
    return checkpoint.get("datamodule_hyper_parameters", {}).get("image_size")


def input_channels(net: nn.Module) -> int:
    """Channels of the first convolution: the stem of every network in this project."""
    first_conv = next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)
    return first_conv.in_channels if first_conv is not None else 3


def export_onnx(
    net: nn.Module, out: Path, example: torch.Tensor, metadata: dict[str, str] | None = None
) -> None:
    """ONNX through ``torch.export`` (the dynamo exporter, which needs onnxscript), with a dynamic batch axis.

    The input is named ``images`` (N, C, H, W) and the output ``logits`` (N, classes); ``metadata`` goes to the
    model's ``metadata_props`` (ONNX Runtime: ``session.get_modelmeta().custom_metadata_map``).
    """
    weight_bytes = sum(p.numel() * p.element_size() for p in net.parameters())
    program = torch.onnx.export(
        net,
        (example,),
        None,  # saved below, once the metadata is in
        dynamo=True,
        input_names=["images"],
        output_names=["logits"],
        dynamic_shapes=({0: torch.export.Dim("batch")},),  # one dict per positional input: axis 0 varies
        verbose=False,
    )
    program.model.metadata_props.update(metadata or {})
    # Weights beside the graph only when they must be.
    program.save(str(out), external_data=weight_bytes > ONNX_SINGLE_FILE_BYTES)


def predict_metadata(checkpoint: dict, image_size: int) -> dict[str, str] | None:
    """What ``python -m convnext_pl.export predict`` needs to classify image files as ``main.py predict`` does: the
    evaluation transform of the checkpoint's data module at ``image_size`` and its class names.

    The data module is rebuilt from the checkpoint's ``datamodule_hyper_parameters`` (its class path and init
    args, which LightningCLI records), with ``image_size`` set to the traced size. Returns None, with a warning
    saying why, when that fails: the graph is still worth exporting for other runtimes.
    """
    try:
        return _predict_metadata(checkpoint, image_size)
    except Exception as error:  # an import, an init-arg check, a transform step that cannot travel
        warnings.warn(
            f"the ONNX file carries no preprocessing metadata ({error}); "
            "`python -m convnext_pl.export predict` will refuse it",
            stacklevel=2,
        )
        return None


def _predict_metadata(checkpoint: dict, image_size: int) -> dict[str, str]:
    init_args = dict(checkpoint.get("datamodule_hyper_parameters") or {})
    class_path = init_args.pop("_class_path", None)
    init_args.pop("_instantiator", None)
    if class_path is None:
        raise ValueError("the checkpoint records no data module class")
    datamodule = instantiate_class(
        (), {"class_path": class_path, "init_args": {**init_args, "image_size": image_size}}
    )
    if not isinstance(datamodule, ClassificationDataModule):
        raise ValueError(f"{class_path} is not a classification data module")
    return {
        PREPROCESSING_KEY: json.dumps(describe_transform(datamodule.evaluation_transform())),
        # What setup("predict") gives main.py predict: names known without the training images, else none.
        CLASS_NAMES_KEY: json.dumps(list(datamodule._predict_class_names())),
        DATA_KEY: class_path,
    }


def export_torchscript(net: nn.Module, out: Path, example: torch.Tensor) -> None:
    """TorchScript by tracing (the networks have no data-dependent control flow); load with ``torch.jit.load``."""
    with warnings.catch_warnings():
        # PyTorch marks TorchScript deprecated in favour of torch.export; the format is still what
        # LibTorch (C++) deployments load, and the user asked for it.
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        traced = torch.jit.trace(net, example)
        traced.save(str(out))


def export_safetensors(net: nn.Module, out: Path, net_config: dict) -> None:
    """The weights under the official ConvNeXt names, with the ``model.net`` config as metadata.

    ``convnext_pl.models.load_pretrained`` (and ``--model.pretrained``) read the file back into a model built
    with ``create_model``.
    """
    state = {key: value.contiguous() for key, value in net.state_dict().items()}
    save_file(state, str(out), metadata={"net": json.dumps(net_config)})


def export(
    ckpt: str | Path, format: str, out: str | Path, image_size: int | None = None, overwrite: bool = False
) -> Path:
    """Export the network of ``ckpt`` to ``out``.

    Args:
        ckpt: Lightning checkpoint written by the CLI.
        format: one of :data:`FORMATS`.
        out: file to write.
        image_size: side of the example input that traces the graph (ONNX keeps the spatial size fixed);
            None: the size the checkpoint's data was configured with, else 224.
        overwrite: replace ``out`` if it exists.

    Returns:
        The written path.
    """
    if format not in FORMATS:
        raise UserError(f"Unknown format '{format}'; choose one of {', '.join(FORMATS)}.")
    out = Path(out)
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists; choose another --out or pass --overwrite to replace it.")
    if image_size is not None and image_size <= 0:
        raise UserError(f"--image-size must be positive, got {image_size}.")
    net, checkpoint = load_network(ckpt)
    out.parent.mkdir(parents=True, exist_ok=True)
    if format == "safetensors":
        export_safetensors(net, out, checkpoint["hyper_parameters"]["net"])
        return out
    size = image_size or recorded_image_size(checkpoint) or DEFAULT_IMAGE_SIZE
    example = torch.randn(2, input_channels(net), size, size)  # batch 2: a batch of 1 could be specialised
    with torch.no_grad():
        if format == "onnx":
            export_onnx(net, out, example, predict_metadata(checkpoint, size))
        else:
            export_torchscript(net, out, example)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m convnext_pl.export --ckpt PATH --format FORMAT --out FILE``, and
    ``python -m convnext_pl.export predict MODEL.onnx --images ... --output CSV`` (:mod:`convnext_pl.export.onnx_predict`).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["predict"]:
        from convnext_pl.export.onnx_predict import main as predict_main

        return predict_main(argv[1:])
    parser = OneLineArgumentParser(
        prog="python -m convnext_pl.export",
        description=(
            "Export the network of a checkpoint from `python main.py fit` for inference. The checkpoint's "
            "state_dict is exported: with the EMA callback, last.ckpt and ema-*.ckpt hold the EMA weights there "
            "and raw-*.ckpt the raw ones; without it, the raw weights. `python -m convnext_pl.export predict "
            "--help`: classify images with an ONNX export."
        ),
    )
    parser.add_argument("--ckpt", required=True, help="Lightning checkpoint (.ckpt) written by the CLI.")
    parser.add_argument(
        "--format",
        required=True,
        choices=FORMATS,
        help="onnx (dynamic batch axis; input 'images', output 'logits'), torchscript (traced; TorchScript is "
        "deprecated in PyTorch but still what LibTorch loads) or safetensors (weights only, official names).",
    )
    parser.add_argument("--out", required=True, help="File to write.")
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="Input side used to trace the graph (default: the checkpoint's data image size, else 224).",
    )
    parser.add_argument("--overwrite", action="store_true", help="Replace --out if it exists.")
    args = parser.parse_args(argv)
    with one_line_errors():
        path = export(args.ckpt, args.format, args.out, args.image_size, args.overwrite)
    print(f"Wrote {args.format} export to {path}")


if __name__ == "__main__":
    main()
