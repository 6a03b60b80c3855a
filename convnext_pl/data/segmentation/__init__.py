"""Semantic segmentation data: ADE20K's layout, any image/mask folder pair, synthetic scenes, and the paired transforms."""
