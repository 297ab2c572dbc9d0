"""fMRI -> BLIP-2 decoding: stage 1 (ridge), stage 2 (contrastive), captions and their evaluation.

- :mod:`lib.decoding.stage1` — the steps of the ridge map fMRI -> query tokens (chapter 03);
- :mod:`lib.decoding.decoder` — the map itself (:class:`QueryTokenDecoder`), its files, the
  ``predictions.h5`` reader/writer and the test-image leakage check;
- :mod:`lib.decoding.generate` — captions from (predicted) query tokens, batched;
- stage 2, in parts: :mod:`lib.decoding.pairs` (brain-caption pairs, the train/validation split
  and its leakage checks), :mod:`lib.decoding.itm` (the ITM checkpoint, its text side, the ITC
  similarity and loss, brain <-> text retrieval), :mod:`lib.decoding.contrastive` (the model
  and its predictions), :mod:`lib.decoding.train_config` (its settings, ``TrainConfig``),
  :mod:`lib.decoding.loop` (the training loop),
  :mod:`lib.decoding.checkpoints` (weights, resumable checkpoints, the retrieval head);
- :mod:`lib.decoding.evaluate` — the pieces of a run's evaluation: controls, caption scores,
  the permutation test, the ratio to the image upper bound, ``metrics.json`` and its tables;
- :mod:`lib.decoding.retrieval` — image retrieval under a rule, brain -> text retrieval, and
  the paired comparison of two runs;
- :mod:`lib.decoding.memory` — GPU / host memory of every decoding stage from the real shapes
  (``memory_table``, ``peak_memory``; used by the preflight);
- :mod:`lib.decoding.ablation` — the memory-size ablation and run names;
- :mod:`lib.decoding.roi_captions` — captions of ROI indicator patterns and the category words;
  :mod:`lib.decoding.category` — the category test of ROI captions against random regions;
- :mod:`lib.decoding.figures` — stage-1 figures and stage-2 loss curves.
"""

from lib.decoding.ablation import (
    ablation_figure,
    ablation_figure_static,
    memory_ablation,
    run_name,
    run_retrieval,
)
from lib.decoding.category import (
    RoiPatterns,
    blip2_captioner,
    category_ceiling,
    category_patterns,
    category_test,
    category_test_figure,
)
from lib.decoding.checkpoints import load_heads, load_weights, save_heads, save_weights
from lib.decoding.contrastive import BrainTextContrastive, predict_tokens
from lib.decoding.decoder import (
    PREDICTIONS_FILE,
    LeakageError,
    QueryTokenDecoder,
    assert_no_test_ids,
    load_decoder,
    read_predictions,
    write_predictions,
)
from lib.decoding.evaluate import (
    CONDITION_COLUMNS,
    CONTROL_DESCRIPTIONS,
    PERMUTATION_METRICS,
    RATIO_METRICS,
    brain_vs_shuffled,
    derangement,
    itc_image_caption_scores,
    metrics_retrieval_table,
    metrics_table,
    nearest_train,
    ratio_to_upper_bound,
    score_captions,
    score_conditions,
    write_run_outputs,
)
from lib.decoding.figures import loss_curves, plot_correlations, plot_pred_vs_true
from lib.decoding.generate import generate_captions, load_captioner, prompt_ids
from lib.decoding.itm import (
    brain_text_retrieval,
    contrastive_loss,
    encode_texts,
    itc_similarity,
    load_itm,
    pick_captions,
    soft_targets,
)
from lib.decoding.loop import TrainResult, fit
from lib.decoding.memory import memory_table, peak_memory
from lib.decoding.pairs import PairData, Stage2Data, check_split, split_train_val, stage2_data
from lib.decoding.retrieval import (
    RETRIEVAL_CENTER,
    RETRIEVAL_RULES,
    caption_embeddings,
    compare_runs,
    retrieval_options,
    single_trial_predictions,
    text_retrieval,
)
from lib.decoding.roi_captions import (
    ROIS,
    auto_scale,
    has_roi,
    indicator_tokens,
    load_lexicon,
    named_categories,
    names_category,
    roi_indicator,
    roi_sizes,
)
from lib.decoding.stage1 import (
    Stage1Result,
    average_by_id,
    correlation_map,
    cosine_matrix,
    decoder_from_ridge,
    drop_images,
    fit_ridge_map,
    fit_stage1,
    lookup_features,
    predict_by_image,
    qformer_cache_path,
    stage1_inputs,
    stage1_settings,
)
from lib.decoding.train_config import TrainConfig

__all__ = [
    "BrainTextContrastive", "CONDITION_COLUMNS", "CONTROL_DESCRIPTIONS", "LeakageError",
    "PERMUTATION_METRICS", "PREDICTIONS_FILE", "PairData", "QueryTokenDecoder", "RATIO_METRICS",
    "RETRIEVAL_CENTER", "RETRIEVAL_RULES", "Stage1Result", "Stage2Data", "TrainConfig",
    "TrainResult", "assert_no_test_ids", "average_by_id", "brain_text_retrieval",
    "brain_vs_shuffled", "caption_embeddings", "check_split", "compare_runs",
    "contrastive_loss", "correlation_map", "cosine_matrix", "derangement", "encode_texts", "fit",
    "fit_stage1", "generate_captions", "itc_image_caption_scores", "itc_similarity",
    "load_captioner", "load_decoder", "load_heads", "load_itm", "load_weights", "lookup_features",
    "loss_curves", "memory_table", "metrics_retrieval_table", "metrics_table", "nearest_train",
    "peak_memory", "pick_captions", "plot_correlations", "plot_pred_vs_true", "predict_tokens",
    "prompt_ids", "qformer_cache_path", "ratio_to_upper_bound", "read_predictions",
    "retrieval_options", "run_name", "save_heads", "save_weights", "score_captions",
    "score_conditions", "single_trial_predictions", "soft_targets", "split_train_val",
    "stage1_inputs", "stage2_data", "text_retrieval", "write_predictions", "write_run_outputs",
    # stage 1, in steps (notebook 03)
    "decoder_from_ridge", "drop_images", "fit_ridge_map", "predict_by_image", "stage1_settings",
    # ROI captions, the category test and the memory ablation (notebook 06)
    "ROIS", "RoiPatterns", "ablation_figure", "ablation_figure_static", "auto_scale",
    "blip2_captioner", "category_ceiling", "category_patterns", "category_test",
    "category_test_figure", "has_roi", "indicator_tokens", "load_lexicon", "memory_ablation",
    "named_categories", "names_category", "roi_indicator", "roi_sizes",
    "run_retrieval",
]
