"""The dense-prediction task LightningModules: ``segmentation.SemanticSegmenter``, ``detection.MaskRCNNDetector``."""
