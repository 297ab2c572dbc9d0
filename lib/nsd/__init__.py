"""Natural Scenes Dataset: raw layout, preparation, prepared-subject reader and download.

>>> from lib.nsd import prepare_subject, PreparedSubject   # doctest: +SKIP
>>> path = prepare_subject("data/toy/nsd", 1, "data/derived/toy")  # doctest: +SKIP
>>> subj = PreparedSubject(path)  # doctest: +SKIP
>>> X, ids = subj.averaged_betas("train", roi="V1")  # doctest: +SKIP
"""

from lib.nsd.design import ExpDesign, load_coco_captions, load_expdesign, load_stim_info
from lib.nsd.errors import (
    NSDCorruptFileError,
    NSDDataError,
    NSDFormatError,
    NSDGridMismatchError,
    NSDMissingFileError,
)
from lib.nsd.layout import ROI_FILES, ROI_LABELS, NSDLayout
from lib.nsd.prepare import prepare_subject
from lib.nsd.reader import ROI_GROUPS, PreparedSubject
from lib.nsd.summary import roi_atlas, session_value_table, split_table

__all__ = [
    "ROI_FILES",
    "ROI_GROUPS",
    "ROI_LABELS",
    "ExpDesign",
    "NSDCorruptFileError",
    "NSDDataError",
    "NSDFormatError",
    "NSDGridMismatchError",
    "NSDLayout",
    "NSDMissingFileError",
    "PreparedSubject",
    "load_coco_captions",
    "load_expdesign",
    "load_stim_info",
    "prepare_subject",
    "roi_atlas",
    "session_value_table",
    "split_table",
]
