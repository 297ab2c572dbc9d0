"""braincap: decode brain activity (NSD fMRI) into captions with BLIP-2.

The package is the shared code behind the analysis book's notebooks:

- :mod:`lib.config`   data roots, devices, seeds and stage output paths
- :mod:`lib.io`       atomic writes
- :mod:`lib.run`      run the book's notebooks with papermill for a parameter set
"""

__version__ = "0.1.0"
