"""Brain decoding with BLIP-2: fMRI -> Q-Former query tokens -> captions.

- :mod:`lib.decoding.stage1` — ridge map fMRI -> query tokens (:class:`QueryTokenDecoder`),
  ``predictions.h5`` reader/writer, image-grouped folds and the test-image leakage check;
- :mod:`lib.decoding.generate` — captions from (predicted) query tokens, batched;
- :mod:`lib.decoding.evaluate` — captions, retrieval, controls and permutation tests of a run;
- stage 2, in parts: :mod:`lib.decoding.pairs` (brain-caption pairs, the train/validation split
  and its leakage checks), :mod:`lib.decoding.itm` (the ITM checkpoint, its text side, the ITC
  similarity and loss, brain <-> text retrieval), :mod:`lib.decoding.contrastive` (the model
  and its predictions), :mod:`lib.decoding.loop` (the training loop),
  :mod:`lib.decoding.checkpoints` (weights, resumable checkpoints, the retrieval head);
- :mod:`lib.decoding.memory` — GPU / host memory of every decoding stage from the real shapes
  (``memory_table``, ``peak_memory``; used by the preflight);
- :mod:`lib.decoding.ablation` — the memory-size ablation and run names;
- :mod:`lib.decoding.figures` — stage-1 figures and stage-2 loss curves.
"""

from lib.decoding.ablation import run_name
from lib.decoding.checkpoints import load_heads, load_weights, save_heads, save_weights
from lib.decoding.contrastive import BrainTextContrastive, predict_tokens
from lib.decoding.figures import loss_curves, plot_correlations, plot_pred_vs_true
from lib.decoding.generate import caption_images, generate_captions, load_captioner, prompt_ids
from lib.decoding.itm import (
    brain_text_retrieval,
    contrastive_loss,
    encode_texts,
    itc_similarity,
    load_itm,
    pick_captions,
    soft_targets,
)
from lib.decoding.loop import TrainConfig, TrainResult, fit
from lib.decoding.memory import memory_table, peak_memory
from lib.decoding.pairs import PairData, Stage2Data, check_split, split_train_val, stage2_data
from lib.decoding.stage1 import (
    PREDICTIONS_FILE,
    LeakageError,
    QueryTokenDecoder,
    Stage1Result,
    assert_no_test_ids,
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
    "PREDICTIONS_FILE", "BrainTextContrastive", "LeakageError", "PairData", "QueryTokenDecoder",
    "Stage1Result", "Stage2Data", "TrainConfig", "TrainResult", "assert_no_test_ids",
    "average_by_id", "brain_text_retrieval", "caption_images", "check_split", "contrastive_loss",
    "correlation_map", "cosine_matrix", "encode_texts", "fit", "fit_stage1",
    "generate_captions", "itc_similarity", "load_captioner", "load_decoder", "load_heads",
    "load_itm", "load_weights", "lookup_features", "loss_curves", "memory_table", "peak_memory",
    "pick_captions", "plot_correlations", "plot_pred_vs_true", "predict_tokens", "prompt_ids",
    "qformer_cache_path", "read_predictions", "run_name", "save_heads", "save_weights",
    "soft_targets", "split_train_val", "stage1_inputs", "stage2_data", "write_predictions",
]
