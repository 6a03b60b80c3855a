"""Image data as shards on a local disk or in object storage (``s3://``): the format (``shards.py``), the source
layouts (``layouts.py``: ImageFolder, COCO, ADE20K), the converter (``writer.py``, ``python -m
convnext_pl.data.streaming write``), the store (``store.py``), the reader with its bounded cache (``reader.py``), the
training order (``sampler.py``), what every streaming DataModule shares (``source.py``) and the DataModules:
classification (``datamodule.py``), COCO (``coco.py``) and ADE20K (``segmentation.py``). Why these shards and not a
shard library: docs/scaling.md, "Data at scale"."""

from convnext_pl.data.streaming.coco import StreamingCOCODataModule
from convnext_pl.data.streaming.datamodule import StreamingImageDataModule
from convnext_pl.data.streaming.segmentation import StreamingADE20KDataModule

__all__ = ["StreamingADE20KDataModule", "StreamingCOCODataModule", "StreamingImageDataModule"]
