"""``python -m convnext_pl.data.streaming write --src <ImageFolder root> --out <folder or s3://bucket/prefix>``:
ImageNet (or any ImageFolder tree, or a flat tree of class folders as ImageNet-22K) as shards (``shards.py``);
``--layout coco`` (``train2017/``, ``val2017/``, ``annotations/``) and ``--layout ade20k`` (``ADEChallengeData2016``)
convert the dense tasks' official layouts (``layouts.py``).
``python -m convnext_pl.data.streaming digits-folder --out <folder>`` writes the offline demo's source images."""

import os
from pathlib import Path

from convnext_pl.data.classification.synthetic_files import write_digits_folder
from convnext_pl.data.streaming.layouts import DEFAULT_SPLITS
from convnext_pl.data.streaming.writer import convert
from convnext_pl.errors import OneLineArgumentParser, one_line_errors


def build_parser() -> OneLineArgumentParser:
    parser = OneLineArgumentParser(prog="python -m convnext_pl.data.streaming", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    write = commands.add_parser("write", help="convert an image folder, COCO or ADE20K into shards")
    write.add_argument("--src", required=True, help="ImageFolder root (train/ and val/ of class folders) or a "
                       "folder of class folders (written as split 'train'); the COCO or ADE20K root for "
                       "--layout coco / ade20k")  # fmt: skip
    write.add_argument("--layout", choices=sorted(DEFAULT_SPLITS), default="imagefolder",
                       help="what --src holds: imagefolder (classes), coco (images + instances_<split>.json, "
                            "copied beside the shards) or ade20k (images + PNG label maps, both kept as they "
                            "are)")  # fmt: skip
    write.add_argument("--out", required=True, help="local folder or s3://bucket/prefix (credentials: boto3's "
                       "default chain; endpoint: AWS_ENDPOINT_URL)")  # fmt: skip
    write.add_argument("--split", nargs="+", default=None,
                       help="split folders under --src (default: imagefolder train val, coco train2017 val2017, "
                            "ade20k training validation)")  # fmt: skip
    write.add_argument("--shard-size-mb", type=float, default=64,
                       help="target shard size (64 MB, litdata's and MosaicML streaming's default: about a second "
                            "per shard from S3; ImageNet-1K ~2,300 shards, 22K ~21,000)")  # fmt: skip
    write.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="threads writing shards")
    write.add_argument("--resize-longer", type=int, default=None, metavar="N",
                       help="re-encode (JPEG q95) images whose longer side passes N pixels to N: a second lossy "
                            "generation and a full decode + encode per image (about 3x the conversion time), "
                            "for smaller shards; off by default, the original bytes are kept")  # fmt: skip
    write.add_argument("--overwrite", action="store_true", help="delete what --out holds first")
    write.add_argument("--resume", action="store_true",
                       help="continue an interrupted conversion: shards whose size and hash match their record "
                            "are kept, the rest rewritten")  # fmt: skip
    write.add_argument("--no-progress", action="store_true", help="no progress bar")
    digits = commands.add_parser(
        "digits-folder", help="write scikit-learn's digits as an ImageFolder of PNGs"
    )
    digits.add_argument("--out", required=True, help="folder to write (must not exist, or be empty)")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "digits-folder":
        if Path(args.out).exists() and any(Path(args.out).iterdir()):
            parser.error(f"--out {args.out} is not empty; give a new folder")
        write_digits_folder(args.out)
        print(f"scikit-learn digits -> {args.out}/train, {args.out}/val")
        return
    if args.overwrite and args.resume:
        parser.error("--overwrite and --resume exclude each other")
    with one_line_errors():
        counts = convert(args.src, args.out, args.split, args.shard_size_mb, args.workers, args.resize_longer,
                         args.overwrite, args.resume, progress=not args.no_progress,
                         layout=args.layout)  # fmt: skip
    print(", ".join(f"{split}: {count} images" for split, count in counts.items()) + f" -> {args.out}")


if __name__ == "__main__":
    main()
