"""Brain decoding with BLIP-2: fMRI -> Q-Former query tokens -> captions.

- :mod:`lib.decoding.stage1` — ridge map fMRI -> query tokens (:class:`QueryTokenDecoder`),
  ``predictions.h5`` reader/writer, image-grouped folds and the test-image leakage check;
- :mod:`lib.decoding.generate` — captions from (predicted) query tokens, batched;
- :mod:`lib.decoding.evaluate` — captions, retrieval, controls and permutation tests of a run;
- :mod:`lib.decoding.contrastive`, :mod:`lib.decoding.train` — stage 2;
- :mod:`lib.decoding.memory` — GPU / host memory of every decoding stage from the real shapes
  (``memory_table``, ``peak_memory``; used by the preflight);
- :mod:`lib.decoding.figures` — stage-1 figures.
"""

from lib.decoding.generate import caption_images, generate_captions, load_captioner, prompt_ids
from lib.decoding.stage1 import (
    QueryTokenDecoder,
    Stage1Result,
    average_by_id,
    correlation_map,
    cosine_matrix,
    fit_stage1,
    load_decoder,
    read_predictions,
    stage1_inputs,
    write_predictions,
)

__all__ = [
    "QueryTokenDecoder", "Stage1Result", "average_by_id", "caption_images", "correlation_map",
    "cosine_matrix", "fit_stage1", "generate_captions", "load_captioner", "load_decoder",
    "prompt_ids", "read_predictions", "stage1_inputs", "write_predictions",
]
