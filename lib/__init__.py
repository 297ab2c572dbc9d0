"""braincap: decode brain activity (NSD fMRI) into captions with BLIP-2.

The package is the shared code behind the analysis book's notebooks:

- :mod:`lib.config`    data roots, devices, seeds and stage output paths
- :mod:`lib.io`        atomic writes
- :mod:`lib.toyworld`  the simulated NSD and its small BLIP-2-family models
- :mod:`lib.nsd`       raw NSD files -> one prepared file per subject; its reader; downloads
- :mod:`lib.ridge`     fast multi-target ridge with leave-one-out or (grouped) k-fold alpha
  selection (NumPy or torch)
- :mod:`lib.scoring`   per-target correlation and R^2, noise ceilings
- :mod:`lib.features`  cached per-layer features of vision and language models, BLIP-2
  Q-Former outputs
- :mod:`lib.encoding`  neural predictivity per model, layer and ROI (the parts of the
  convergence chapter)
- :mod:`lib.decoding`  fMRI -> query tokens (stage 1), contrastive alignment (stage 2), captions
- :mod:`lib.metrics`   caption metrics (pycocoevalcap), retrieval, permutation tests
- :mod:`lib.plotting`  offline plotly output, brain slices and surfaces, galleries
- :mod:`lib.run`       run the book's notebooks with papermill for a parameter set
  (:mod:`lib.jobs` plans the job graph, :mod:`lib.cluster` executes it, one notebook job
  through :mod:`lib.notebook_job`)
"""

__version__ = "0.1.0"
