"""The task LightningModules on one base (``base.TaskModule``): classification, segmentation, detection and FCMAE
pre-training, and their optimisation recipes (``recipes.py``)."""
