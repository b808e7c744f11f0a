"""Data-set components: the built-in synthetic smears, folder and manifest readers, real-data readers.

Every data set returns an :class:`~hemaflow.plugins.artifacts.ImageSet`, an *index* of images
(ids, patient, label, paths): pixels are read one image at a time by whoever needs them, so a data
set of 100k images costs a table of 100k rows, not 100k decoded images.

Components:
    ``synthetic_smears``  procedurally generated Giemsa-like fields with ground-truth masks
                          (the built-in default; see :mod:`hemaflow.lib.smear_generator`).
                          ``patients_per_class: 2, images_per_patient: 1, image_size: 96``
                          generates in well under a second: use that in tests.
    ``manifest``          a CSV/Parquet file with ``image, patient, label[, mask][, split]``.
    ``class_folders``     ``<root>/<split>/<CLASS>/<image>``, masks in a parallel tree.
    ``patient_folders``   ``<root>/<patient>/.../<image>`` plus a labels CSV (patient -> label).
    ``bccd_fields``       ``../shared/data/bccd-fields`` (fields, white-cell masks, BCCD splits).
    ``wbc_crops``         ``../shared/data/wbc-crops`` (single-cell crops, 5 white-cell types).

Modules: :mod:`.synthetic_smears`; :mod:`.folders` (``manifest``, ``class_folders``,
``patient_folders``); :mod:`.real_data` (``bccd_fields``, ``wbc_crops``); :mod:`.common` (the
:class:`~.common.FileDataset` base every file reader builds on, shared schema pieces). Each module
registers its own components (``hemaflow.plugins.DEFAULT_PLUGINS``).

Validation decides bad files in the data step: with ``validate: auto`` (the default) each image
of at most 1 Mpx (single-cell crops, 640x480 fields) is decoded fully with PIL, which catches
truncated files (0.1-2 ms each); larger images, and every image with ``validate: header``, are
opened without decoding the pixels (format, size, mode), which catches unreadable files and
non-images for 100k images in seconds; ``full`` decodes every image. Each mask is decoded with the
data set's ``mask_spec`` (size must match the image, every value or colour must map), so a bad
mask is refused in the data step rather than after segmentation. ``on_error: skip`` drops bad
items (recorded with ``ctx.warn``, in ``meta["skipped"]`` and in ``skipped.parquet`` beside the
ImageSet: file, reason, step); ``stop`` raises the first ``DataError``. Files that are not images
(``Thumbs.db``, ``.DS_Store``, ``._*``, ``__MACOSX``...) are ignored and counted in
``meta["ignored_files"]``. The ImageSet stores absolute paths.
"""

from __future__ import annotations

from hemaflow.plugins.datasets.common import (
    CLASSES,
    IMAGE_EXTENSIONS,
    MASK_SPEC,
    ON_ERROR,
    VALIDATE,
    FileDataset,
    Listing,
)
from hemaflow.plugins.datasets.folders import (
    COMMON,
    MASKS_PARALLEL,
    SPLIT_NAMES,
    ClassFolders,
    Manifest,
    PatientFolders,
)
from hemaflow.plugins.datasets.real_data import WBC_TYPES, BCCDFields, SharedDataset, WBCCrops
from hemaflow.plugins.datasets.synthetic_smears import SyntheticSmears

__all__ = ["CLASSES", "COMMON", "IMAGE_EXTENSIONS", "MASKS_PARALLEL", "MASK_SPEC", "ON_ERROR", "SPLIT_NAMES",
           "VALIDATE", "WBC_TYPES", "BCCDFields", "ClassFolders", "FileDataset", "Listing", "Manifest",
           "PatientFolders", "SharedDataset", "SyntheticSmears", "WBCCrops"]
