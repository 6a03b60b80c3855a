"""Image classification data as shards on a local disk or in object storage (``s3://``): the format
(``shards.py``), the converter (``writer.py``, ``python -m convnext_pl.data.streaming write``), the store
(``store.py``), the reader with its bounded cache (``reader.py``), the training order (``sampler.py``) and the
DataModule (``datamodule.py``). Why these shards and not a shard library: docs/scaling.md, "Data at scale"."""

from convnext_pl.data.streaming.datamodule import StreamingImageDataModule

__all__ = ["StreamingImageDataModule"]
