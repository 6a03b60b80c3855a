"""What the notebooks measure and draw, importable from scripts too.

``runs``: a run's CSV log as curves, predictions as an image grid and a confusion matrix.
``inside``: the effective receptive field, the feature maps of each stage, the layer-scale gammas.
``roadmap``: the roadmap report (every step's params and GFLOPs beside the paper's, as text, CSV and a chart).
``python -m convnext_pl.analysis curves RUN --out FILE.png`` draws a run's curves from the command line.

Figures use matplotlib's ``Figure`` API rather than pyplot: no global figure state, so the same call works in
a script, a test and a notebook (where ``display(fig)`` shows it).
"""

from convnext_pl.analysis.inside import (
    effective_receptive_field,
    high_contribution_area_ratio,
    layer_scale_gammas,
    plot_layer_scale,
    plot_receptive_fields,
    plot_stage_maps,
    sample_photo_crops,
    stage_feature_maps,
)
from convnext_pl.analysis.runs import (
    Series,
    plot_confusion_matrix,
    plot_prediction_grid,
    plot_training_curves,
    predict,
    project_file,
    read_metrics,
)

__all__ = [
    "Series",
    "effective_receptive_field",
    "high_contribution_area_ratio",
    "layer_scale_gammas",
    "plot_confusion_matrix",
    "plot_layer_scale",
    "plot_prediction_grid",
    "plot_receptive_fields",
    "plot_stage_maps",
    "plot_training_curves",
    "predict",
    "project_file",
    "read_metrics",
    "sample_photo_crops",
    "stage_feature_maps",
]
