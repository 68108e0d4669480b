"""Dataset formats, one module per layout (``yolo``, ``coco``; the anomaly layouts join them), all producing
``common.DatasetIndex`` / ``SampleRecord`` lists. Indexing reads labels and image/mask *headers* only (no pixel
decoding), validates the input and counts what it fixed in ``fgkd.data.report.SplitStats``."""

from fgkd.data.formats.coco import coco_categories, index_coco
from fgkd.data.formats.common import (
    MISSING_MASK_POLICIES,
    DataError,
    DatasetIndex,
    SampleRecord,
    SegmentMask,
    derive_sibling,
    sanitize_boxes,
)
from fgkd.data.formats.yolo import (
    index_yolo,
    list_split_images,
    parse_names,
    parse_yolo_labels,
    read_data_yaml,
)

__all__ = ["MISSING_MASK_POLICIES", "DataError", "DatasetIndex", "SampleRecord", "SegmentMask", "coco_categories",
           "derive_sibling", "index_coco", "index_yolo", "list_split_images", "parse_names", "parse_yolo_labels",
           "read_data_yaml", "sanitize_boxes"]
