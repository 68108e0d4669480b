"""Per-split data counters and the one-screen report printed when the datamodule is set up."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass
class SplitStats:
    """What indexing a split found (all counts are over image files of that split)."""

    images: int = 0  # usable images (after skipping bad ones)
    skipped: int = 0  # unreadable/truncated images skipped with skip_bad=true
    missing_labels: int = 0  # YOLO: images without a label file (= no objects)
    missing_masks: int = 0  # images without a mask, filled per missing_mask=full|empty
    resized_masks: int = 0  # masks whose size differs from the image (nearest-resized at load)
    clipped: int = 0  # boxes partly outside the image, clipped to it
    dropped: int = 0  # degenerate boxes (empty after clipping / below min_box_size) dropped
    duplicates: int = 0  # exact duplicate boxes (same class and coordinates) dropped
    soft_masks: int = 0  # masks that are not close to binary (JPEG / anti-aliased), data.mask_check
    empty_masks_with_boxes: int = 0  # all-zero masks of images that have boxes, data.mask_check
    crowd_ignored: int = 0  # COCO iscrowd annotations (not used for training)
    boxes_per_class: dict[int, int] = field(default_factory=dict)
    skipped_files: list[str] = field(default_factory=list)

    @property
    def boxes(self) -> int:
        return sum(self.boxes_per_class.values())

    def add_boxes(self, classes: Sequence[int]) -> None:
        for cls in classes:
            self.boxes_per_class[int(cls)] = self.boxes_per_class.get(int(cls), 0) + 1


_COLUMNS = (
    ("images", "images"),
    ("skipped", "skipped"),
    ("missing_labels", "no_label"),
    ("missing_masks", "no_mask"),
    ("resized_masks", "mask_resized"),
    ("boxes", "boxes"),
    ("clipped", "clipped"),
    ("dropped", "dropped"),
    ("duplicates", "duplicates"),
    ("soft_masks", "mask_soft"),
    ("empty_masks_with_boxes", "mask_empty"),
)


def format_report(
    stats: Mapping[str, SplitStats],
    class_names: Sequence[str],
    title: str = "data",
    notes: Sequence[str] = (),
) -> str:
    """A compact table: one row per split with the counters, then boxes per class per split."""
    lines = [f"── {title} " + "─" * max(0, 70 - len(title))]
    split_width = max([5, *(len(name) for name in stats)])
    header = "split".ljust(split_width) + "".join(f"{label:>13}" for _, label in _COLUMNS)
    lines.append(header)
    for split, split_stats in stats.items():
        row = split.ljust(split_width)
        row += "".join(f"{getattr(split_stats, attr):>13}" for attr, _ in _COLUMNS)
        lines.append(row)
    name_width = max([5, *(len(name) for name in class_names)])
    lines.append("boxes per class".ljust(name_width + 6) + "".join(f"{split:>10}" for split in stats))
    for index, name in enumerate(class_names):
        counts = "".join(f"{split_stats.boxes_per_class.get(index, 0):>10}" for split_stats in stats.values())
        lines.append(f"  {index:>2} {name}".ljust(name_width + 6) + counts)
    for split, split_stats in stats.items():
        if split_stats.crowd_ignored:
            lines.append(f"{split}: {split_stats.crowd_ignored} COCO iscrowd annotations ignored")
        if split_stats.skipped_files:
            shown = ", ".join(split_stats.skipped_files[:5])
            more = f" (+{len(split_stats.skipped_files) - 5} more)" if len(split_stats.skipped_files) > 5 else ""
            lines.append(f"{split}: skipped {shown}{more}")
    lines.extend(notes)
    lines.append("─" * 73)
    return "\n".join(lines)
