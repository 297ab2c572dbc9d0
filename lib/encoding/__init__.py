"""Neural predictivity: voxelwise ridge encoding models from model features, per layer and ROI.

Chapter 02 (``notebooks/02_convergence.ipynb``) is the method; this package holds its parts:

- :mod:`~lib.encoding.zoo`: model zoos, parameter counts, the models that could not be used
  (``failed_models.csv``);
- :mod:`~lib.encoding.options`: the feature and fit options (:class:`EncodingOptions`);
- :mod:`~lib.encoding.fit`: one layer's ridge fit on the training images and its test scores;
- :mod:`~lib.encoding.rois`: ROI masks, ROI means, noise ceilings;
- :mod:`~lib.encoding.convergence`: one model of the zoo through the analysis
  (:func:`convergence_one_model`);
- :mod:`~lib.encoding.scores`: ``scores.csv`` and ``voxel_scores.h5``, layer selection on the
  training images;
- :mod:`~lib.encoding.stats`: size against score, trained against untrained, peak depths.

For every model of a zoo and every layer, features of the training images predict the
repetition-averaged betas of every voxel (ridge regression, one alpha per voxel chosen by
leave-one-out on the training images only: one row per image, so the folds are grouped by
image); the fit is scored on the test images (shared1000) by the Pearson correlation per voxel,
then summarised per ROI. The Pearson r of the leave-one-out predictions on the training images
(``val_score``) chooses the best layer of every model and ROI (``selected``): no choice sees
the test images. The noise ceiling of each ROI (:func:`lib.scoring.noise_ceiling`, from the
test images' repetitions) with its chance level gives the context.

The analysis code is the same for the real NSD and the toy world: only the zoo and the
paths differ.
"""

from lib.encoding.convergence import (
    ConvergenceData,
    ModelResult,
    check_quantization,
    convergence_one_model,
    model_features,
    warn_low_alphas,
)
from lib.encoding.fit import encode_layers, fit_layer, reduce_features, standardize
from lib.encoding.options import EncodingOptions
from lib.encoding.rois import (
    CATEGORY_ROIS,
    DEFAULT_ROIS,
    EARLY_ROIS,
    noise_ceilings,
    roi_masks,
    summarize_rois,
)
from lib.encoding.scores import (
    EXTRA_COLUMNS,
    SCORE_COLUMNS,
    best_layers,
    fraction_of_ceiling,
    mark_selected,
    read_voxel_scores,
    score_table,
    write_voxel_scores,
)
from lib.encoding.stats import (
    bootstrap_trained_vs_untrained,
    peak_depths,
    size_score_spearman,
    trained_vs_untrained,
)
from lib.encoding.zoo import (
    FAILED_COLUMNS,
    FAILED_FILE,
    GatedModelSkipped,
    check_available,
    count_parameters,
    failure_row,
    load_zoo,
    n_hidden_states,
    read_failed_models,
    release_memory,
    write_failed_models,
)

__all__ = [
    "CATEGORY_ROIS", "DEFAULT_ROIS", "EARLY_ROIS", "EXTRA_COLUMNS", "FAILED_COLUMNS", "FAILED_FILE",
    "SCORE_COLUMNS", "ConvergenceData", "EncodingOptions", "GatedModelSkipped", "ModelResult",
    "best_layers", "bootstrap_trained_vs_untrained", "check_available", "check_quantization",
    "convergence_one_model", "count_parameters", "encode_layers", "failure_row", "fit_layer",
    "fraction_of_ceiling", "load_zoo", "mark_selected", "model_features", "n_hidden_states",
    "noise_ceilings", "peak_depths", "read_failed_models", "read_voxel_scores", "reduce_features",
    "release_memory", "roi_masks", "score_table", "size_score_spearman", "standardize",
    "summarize_rois", "trained_vs_untrained", "warn_low_alphas", "write_failed_models",
    "write_voxel_scores",
]
