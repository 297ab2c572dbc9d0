"""Brain decoding with BLIP-2: fMRI -> Q-Former query tokens -> captions.

- :mod:`lib.decoding.stage1` — ridge map fMRI -> query tokens (:class:`QueryTokenDecoder`),
  ``predictions.h5`` reader/writer, image-grouped folds and the test-image leakage check;
- :mod:`lib.decoding.generate` — captions from (predicted) query tokens, batched;
- :mod:`lib.decoding.evaluate` — the pieces of a run's evaluation: controls, caption scores,
  the permutation test, the ratio to the image upper bound, ``metrics.json`` and its tables;
- :mod:`lib.decoding.retrieval` — image retrieval under a rule, brain -> text retrieval, and
  the paired comparison of two runs;
- :mod:`lib.decoding.contrastive`, :mod:`lib.decoding.train` — stage 2;
- :mod:`lib.decoding.memory` — GPU / host memory of every decoding stage from the real shapes
  (``memory_table``, ``peak_memory``; used by the preflight);
- :mod:`lib.decoding.figures` — stage-1 figures.
"""

from lib.decoding.contrastive import load_itm
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
from lib.decoding.generate import caption_images, generate_captions, load_captioner, prompt_ids
from lib.decoding.retrieval import (
    RETRIEVAL_CENTER,
    RETRIEVAL_RULES,
    caption_embeddings,
    compare_runs,
    retrieval_options,
    single_trial_predictions,
    text_retrieval,
)
from lib.decoding.stage1 import (
    PREDICTIONS_FILE,
    QueryTokenDecoder,
    Stage1Result,
    average_by_id,
    correlation_map,
    cosine_matrix,
    fit_stage1,
    load_decoder,
    lookup_features,
    qformer_cache_path,
    read_predictions,
    stage1_inputs,
    write_predictions,
)

__all__ = [
    "CONDITION_COLUMNS", "CONTROL_DESCRIPTIONS", "PERMUTATION_METRICS", "PREDICTIONS_FILE",
    "RATIO_METRICS", "RETRIEVAL_CENTER", "RETRIEVAL_RULES", "QueryTokenDecoder", "Stage1Result",
    "average_by_id", "brain_vs_shuffled", "caption_embeddings", "caption_images", "compare_runs",
    "correlation_map", "cosine_matrix", "derangement", "fit_stage1", "generate_captions",
    "itc_image_caption_scores", "load_captioner", "load_decoder", "load_itm", "lookup_features",
    "metrics_retrieval_table", "metrics_table", "nearest_train", "prompt_ids", "qformer_cache_path",
    "ratio_to_upper_bound", "read_predictions", "retrieval_options", "score_captions",
    "score_conditions", "single_trial_predictions", "stage1_inputs", "text_retrieval",
    "write_predictions", "write_run_outputs",
]
