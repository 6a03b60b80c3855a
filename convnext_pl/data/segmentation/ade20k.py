"""ADE20K (SceneParsing 2016) in its official layout, and the synthetic scenes written in the same layout.

Both read through :class:`convnext_pl.data.segmentation.folder.SegmentationFolderDataModule` (loaders, checks, the official
pipeline); this module only fixes the layout, the class count and names, and reduce_zero_label.
"""

from jsonargparse.typing import NonNegativeInt, PositiveFloat, PositiveInt

from convnext_pl.data.segmentation.folder import SegmentationFolderDataModule
from convnext_pl.ranges import LeftOpenUnitInterval

ADE20K_ROOT = "ADEChallengeData2016"


class ADE20KDataModule(SegmentationFolderDataModule):
    """ADE20K (SceneParsing 2016) in its official layout: ``root/images/{training,validation}/*.jpg`` and
    ``root/annotations/{training,validation}/*.png``, 150 classes, label 0 = "other" ignored (reduce_zero_label).

    Args:
        root: the ``ADEChallengeData2016`` folder.
        Others: see :class:`SegmentationFolderDataModule` (the official values are the defaults).
    """

    def __init__(
        self,
        root: str = f"data/{ADE20K_ROOT}",
        batch_size: PositiveInt = 2,
        num_workers: NonNegativeInt = 4,
        scale: tuple[PositiveInt, PositiveInt] = (2048, 512),
        ratio_range: tuple[PositiveFloat, PositiveFloat] = (0.5, 2.0),
        crop_size: tuple[PositiveInt, PositiveInt] = (512, 512),
        cat_max_ratio: LeftOpenUnitInterval = 0.75,
        predict_dir: str | None = None,
        num_classes: int = 150,
        class_names: list[str] | None = None,
    ):
        if class_names is None and num_classes == 150:
            from convnext_pl.data.segmentation.ade20k_classes import ADE20K_CLASSES

            class_names = list(ADE20K_CLASSES)
        super().__init__(
            root,
            num_classes,
            "images/training",
            "annotations/training",
            "images/validation",
            "annotations/validation",
            reduce_zero_label=True,
            class_names=class_names,
            batch_size=batch_size,
            num_workers=num_workers,
            scale=scale,
            ratio_range=ratio_range,
            crop_size=crop_size,
            cat_max_ratio=cat_max_ratio,
            predict_dir=predict_dir,
        )


class SyntheticScenesDataModule(ADE20KDataModule):
    """The offline default: synthetic scenes written once in the ADE20K layout, read as ADE20K is.

    ``prepare_data`` writes ``root`` with :func:`convnext_pl.data.segmentation.ade20k_synthetic.write_scenes` when its
    folders are absent; an existing folder is read as it is, never overwritten.

    Args:
        root: where the scenes are written.
        train_images, val_images: images per split.
        image_size: image width (heights vary from 3/4 of it to all of it).
        seed: the data set is a function of the seed.
        Others: see :class:`SegmentationFolderDataModule`, scaled down to the scenes.
    """

    def __init__(
        self,
        root: str = f"data/synthetic_scenes/{ADE20K_ROOT}",
        train_images: PositiveInt = 96,
        val_images: PositiveInt = 16,
        image_size: PositiveInt = 96,
        seed: int = 0,
        batch_size: PositiveInt = 8,
        num_workers: NonNegativeInt = 0,
        scale: tuple[PositiveInt, PositiveInt] = (128, 96),
        ratio_range: tuple[PositiveFloat, PositiveFloat] = (0.5, 2.0),
        crop_size: tuple[PositiveInt, PositiveInt] = (64, 64),
        cat_max_ratio: LeftOpenUnitInterval = 0.75,
        predict_dir: str | None = None,
    ):
        from convnext_pl.data.segmentation.ade20k_synthetic import CLASSES

        super().__init__(
            root,
            batch_size,
            num_workers,
            scale,
            ratio_range,
            crop_size,
            cat_max_ratio,
            predict_dir,
            num_classes=len(CLASSES),
            class_names=list(CLASSES),
        )
        self.scene_counts, self.image_size, self.seed = (train_images, val_images), image_size, seed

    def prepare_data(self) -> None:
        if all((self.root / sub).is_dir() for sub in ("images/training", "annotations/validation")):
            return
        from convnext_pl.data.segmentation.ade20k_synthetic import write_scenes

        write_scenes(self.root, *self.scene_counts, self.image_size, seed=self.seed)
