"""Natural Scenes Dataset: raw layout, preparation, prepared-subject reader and download.

>>> from lib.nsd import plan_subject, write_prepared, PreparedSubject   # doctest: +SKIP
>>> plan = plan_subject("data/toy/nsd", 1)  # design, sessions, voxels, labels  # doctest: +SKIP
>>> path = write_prepared(plan, "data/derived/toy")  # read, z-score, write  # doctest: +SKIP
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
from lib.nsd.plan import PreparationPlan, plan_subject
from lib.nsd.prepare import prepare_subject, read_session_betas, write_prepared
from lib.nsd.reader import ROI_GROUPS, PreparedSubject
from lib.nsd.summary import roi_atlas, session_value_table, split_table
from lib.nsd.zscore import zscore_session

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
    "PreparationPlan",
    "PreparedSubject",
    "load_coco_captions",
    "load_expdesign",
    "load_stim_info",
    "plan_subject",
    "prepare_subject",
    "read_session_betas",
    "roi_atlas",
    "session_value_table",
    "split_table",
    "write_prepared",
    "zscore_session",
]
