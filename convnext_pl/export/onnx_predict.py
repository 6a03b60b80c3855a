"""Classify image files with an ONNX export, without Lightning or the checkpoint: ``predict`` for deployments.

    python -m convnext_pl.export --ckpt runs/digits/version_0/checkpoints/last.ckpt --format onnx --out digits.onnx
    python -m convnext_pl.export predict digits.onnx --images photos/ --output predictions.csv

ONNX Runtime runs the graph (on the CPU it is the fastest of the project's inference paths: README "Export").
The evaluation transform and the class names come from the file's own metadata (``metadata_props``, written by
``convnext_pl.export.formats`` from the checkpoint's data module), so the CSV is the one ``python main.py predict`` writes
for the same images and checkpoint: the same columns, top-k classes and probabilities.
"""

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from convnext_pl.data.augment.transform_spec import build_transform
from convnext_pl.data.images import IMAGE_EXTENSIONS, CorruptImageError, find_image_files, load_rgb
from convnext_pl.errors import OneLineArgumentParser, UserError, one_line_errors
from convnext_pl.training.callbacks import write_topk_csv

# metadata_props keys of an ONNX export (values are JSON, except the class path).
PREPROCESSING_KEY = (
    "convnext_pl.preprocessing"  # describe_transform of the data module's evaluation transform
)
CLASS_NAMES_KEY = "convnext_pl.class_names"  # list of names, empty when the export could not know them
DATA_KEY = "convnext_pl.data"  # class path of the data module the run trained on, for people reading the file
TOP_K = 5  # classes per image, as ImageClassifier.predict_step writes them
DEFAULT_BATCH_SIZE = 32


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, K) logits, shifted by the row maximum so that exp cannot overflow."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


class OnnxClassifier:
    """An exported classifier: its ONNX Runtime session, its evaluation transform and its class names.

    Args:
        path: ``.onnx`` file written by ``python -m convnext_pl.export --format onnx``.
        threads: ONNX Runtime intra-op threads (0: its default, one per physical core).

    Raises:
        UserError: the file is missing, is not an ONNX model, or carries no preprocessing metadata.
    """

    def __init__(self, path: str | Path, threads: int = 0):
        import onnxruntime as ort  # the `export` extra; imported here so the rest of the package needs none

        path = Path(path)
        if not path.is_file():
            raise UserError(
                f"ONNX file {path} does not exist; export one with `python -m convnext_pl.export`."
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own InvalidProtobuf/Fail/InvalidGraph classes
            raise UserError(
                f"{path} is not an ONNX model ONNX Runtime can load; pass a file written by "
                "`python -m convnext_pl.export --format onnx`."
            ) from error
        metadata = self.session.get_modelmeta().custom_metadata_map
        if PREPROCESSING_KEY not in metadata:
            raise UserError(
                f"{path} carries no preprocessing metadata ({PREPROCESSING_KEY}); export the checkpoint again with "
                "`python -m convnext_pl.export --format onnx`, which records it."
            )
        try:
            self.transform = build_transform(json.loads(metadata[PREPROCESSING_KEY]))
            self.class_names: list[str] = json.loads(metadata.get(CLASS_NAMES_KEY, "[]"))
        except ValueError as error:  # json's JSONDecodeError is a ValueError too
            raise UserError(
                f"{path} has damaged preprocessing metadata ({error}); export the checkpoint again with "
                "`python -m convnext_pl.export --format onnx`."
            ) from error
        self.input_name = self.session.get_inputs()[0].name

    def probabilities(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Class probabilities (N, K) of RGB PIL images of any size."""
        batch = torch.stack([self.transform(image) for image in images]).numpy()  # (N, C, H, W) float32
        (logits,) = self.session.run(None, {self.input_name: batch})
        return softmax(logits)


def image_files(sources: Sequence[str]) -> list[str]:
    """The image files of ``sources``: a folder gives every image under it (sorted, as ``main.py predict`` reads
    ``predict_dir``), a file itself.

    Raises:
        UserError: a source that does not exist, or a folder without images.
    """
    files = []
    for source in sources:
        if Path(source).is_dir():
            found = find_image_files(source)
            if not found:
                raise UserError(
                    f"folder {source} holds no {'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} files; pass a folder "
                    "of images or image files to --images"
                )
            files += found
        elif Path(source).is_file():
            files.append(source)
        else:
            raise UserError(f"{source} does not exist; pass image files or folders of images to --images")
    return files


def _load(path: str) -> Image.Image:
    try:
        return load_rgb(path)
    except CorruptImageError as error:  # its advice names a data-module option this command does not have
        raise UserError(
            f"cannot decode image {path}; replace the file or leave it out of --images"
        ) from error


def predict_files(
    model: str | Path,
    sources: Sequence[str],
    output: str | Path,
    batch_size: int = DEFAULT_BATCH_SIZE,
    threads: int = 0,
    overwrite: bool = False,
) -> int:
    """Write the top-k prediction CSV of every image in ``sources`` with an ONNX export; returns the image count.

    Args:
        model: the ``.onnx`` file.
        sources: image files and folders (searched recursively).
        output: CSV to write, with the columns of ``main.py predict``'s ``predictions.csv``.
        batch_size: images per ONNX Runtime call.
        threads: ONNX Runtime intra-op threads (0: its default).
        overwrite: replace ``output`` if it exists.
    """
    output = Path(output)
    if output.exists() and not overwrite:
        raise UserError(
            f"{output} already exists; choose another --output or pass --overwrite to replace it."
        )
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}.")
    if threads < 0:
        raise UserError(f"--threads must be 0 (ONNX Runtime's choice) or more, got {threads}.")
    classifier = OnnxClassifier(model, threads)
    files = image_files(sources)
    rows = []
    for start in range(0, len(files), batch_size):
        paths = files[start : start + batch_size]
        probs = classifier.probabilities([_load(path) for path in paths])
        top = np.argsort(-probs, axis=1, kind="stable")[:, : min(TOP_K, probs.shape[1])]  # (N, k), best first
        rows += [
            (path, classes.tolist(), p[classes].tolist())
            for path, classes, p in zip(paths, top, probs, strict=True)
        ]
    write_topk_csv(output, rows, classifier.class_names)
    return len(rows)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m convnext_pl.export predict MODEL.onnx --images DIR_OR_FILES --output CSV``."""
    parser = OneLineArgumentParser(
        prog="python -m convnext_pl.export predict",
        description="Classify images with an ONNX export (ONNX Runtime on the CPU, no checkpoint, no Lightning); "
        "writes the CSV `python main.py predict` writes.",
    )
    parser.add_argument("model", help="ONNX file from `python -m convnext_pl.export --format onnx`.")
    parser.add_argument("--images", nargs="+", required=True, help="Image files and/or folders (recursive).")
    parser.add_argument("--output", required=True, help="CSV to write: path, top1_class, top1_prob, ...")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="Images per runtime call.")
    parser.add_argument(
        "--threads", type=int, default=0, help="ONNX Runtime threads (default 0: its own choice)."
    )
    parser.add_argument("--overwrite", action="store_true", help="Replace --output if it exists.")
    args = parser.parse_args(argv)
    with one_line_errors():
        count = predict_files(
            args.model, args.images, args.output, args.batch_size, args.threads, args.overwrite
        )
    print(f"Wrote predictions for {count} images to {args.output}")
