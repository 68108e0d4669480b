"""Image and mask decoding: any input (8/16-bit, gray/RGB/RGBA, EXIF-rotated JPEG) -> RGB uint8.

Two levels of validation (contract "Bad input"):

* :func:`probe_image` — a cheap header check at index time: PIL reads only the header (format, size,
  EXIF orientation) and the file's last bytes are checked for the end-of-image marker (JPEG ``FFD9``,
  PNG ``IEND``), which catches the common truncated-download case without decoding.
* :func:`read_image` / :func:`read_mask` — the full decode at load time (same tail check on the bytes,
  then OpenCV); failures raise :class:`BadImageError` naming the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

# EXIF orientations 5..8 swap width and height (transpose/rotate 90/270).
_EXIF_ORIENTATION_TAG = 0x0112
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}
_JPEG_EOI = b"\xff\xd9"
_TAIL_BYTES = 4096


class BadImageError(ValueError):
    """An image or mask file that cannot be read; ``path`` names it."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(
            f"{self.path}: {reason}. Fix: replace or re-export the file, or set data.skip_bad=true to skip it."
        )


@dataclass(frozen=True)
class ImageHeader:
    """What the header says: size after EXIF orientation (as OpenCV will decode it)."""

    height: int
    width: int
    format: str


def _is_jpeg(data: bytes) -> bool:
    return data[:2] == b"\xff\xd8"


def _is_png(data: bytes) -> bool:
    return data[:8] == b"\x89PNG\r\n\x1a\n"


def _check_not_truncated(path: Path, head: bytes, tail: bytes) -> None:
    """Raise if a JPEG/PNG lacks its end marker. In JPEG entropy-coded data 0xFF is always byte-stuffed,
    so ``FFD9`` in the tail can only be the end-of-image marker (trailing camera data after it is fine)."""
    if _is_jpeg(head) and _JPEG_EOI not in tail:
        raise BadImageError(path, "truncated JPEG (no end-of-image marker FFD9)")
    if _is_png(head) and b"IEND" not in tail[-64:]:
        raise BadImageError(path, "truncated PNG (no IEND chunk)")


def probe_image(path: str | os.PathLike) -> ImageHeader:
    """Cheap validity check + size without decoding the pixels."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        size = path.stat().st_size
        if size == 0:
            raise BadImageError(path, "empty file")
        with open(path, "rb") as handle:
            head = handle.read(16)
            handle.seek(max(0, size - _TAIL_BYTES))
            tail = handle.read()
    except OSError as error:
        raise BadImageError(path, f"cannot open ({error.strerror or error})") from error
    _check_not_truncated(path, head, tail)
    try:
        with Image.open(path) as image:
            width, height = image.size
            image_format = image.format or ""
            orientation = image.getexif().get(_EXIF_ORIENTATION_TAG, 1) if image_format == "JPEG" else 1
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        # PIL does not know every format OpenCV reads: fall back to a full decode (rare path).
        decoded = read_image(path)
        return ImageHeader(decoded.shape[0], decoded.shape[1], path.suffix.lstrip(".").upper())
    if width <= 0 or height <= 0:
        raise BadImageError(path, f"invalid size {width}x{height} in header")
    # OpenCV applies the EXIF orientation of JPEGs when decoding, so report the oriented size.
    if orientation in _SWAPPING_ORIENTATIONS:
        width, height = height, width
    return ImageHeader(height, width, image_format)


def probe_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) from the header (EXIF-oriented)."""
    header = probe_image(path)
    return header.height, header.width


def _read_bytes(path: Path) -> np.ndarray:
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise BadImageError(path, f"cannot read ({error.strerror or error})") from error
    if data.size == 0:
        raise BadImageError(path, "empty file")
    _check_not_truncated(path, data[:16].tobytes(), data[-_TAIL_BYTES:].tobytes())
    return data


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Scale any depth to uint8: 16-bit by the full range (65535 -> 255, i.e. /257), float assumed in
    [0, 1] when its max is <= 1 else in [0, 255]. A fixed scale (not per-image min-max) keeps the
    brightness relation between images."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return ((image.astype(np.float32) / 257.0) + 0.5).astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        scaled = image.astype(np.float32)
        if np.nanmax(scaled) <= 1.0:
            scaled = scaled * 255.0
        return np.clip(np.nan_to_num(scaled) + 0.5, 0, 255).astype(np.uint8)
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        scaled = (image.astype(np.float64) - info.min) / (info.max - info.min) * 255.0
        return (scaled + 0.5).astype(np.uint8)
    raise TypeError(f"unsupported image dtype {image.dtype}")


_REDUCED_FLAGS = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}


def jpeg_reduction(size: tuple[int, int], long_side: int) -> int:
    """Largest libjpeg DCT down-scaling factor (1, 2, 4, 8) that keeps the long side >= ``long_side``."""
    for factor in (8, 4, 2):
        if max(size) >= factor * long_side:
            return factor
    return 1


def _check_jpeg_stream(path: Path, data: np.ndarray, decoded_shape: tuple[int, int]) -> None:
    """Corrupt JPEG entropy data: OpenCV (libjpeg) decodes it anyway, with only a warning on stderr and grey or
    shifted blocks in the image; PIL's decoder reports it as an error. Decoded by PIL at the size OpenCV
    produced (``draft``: the same DCT reduction), so the check costs about one more decode, once per image
    with the resized-image cache on."""
    import io as _io

    from PIL import Image

    try:
        with Image.open(_io.BytesIO(data.tobytes())) as pil:
            pil.draft("RGB", (decoded_shape[1], decoded_shape[0]))
            pil.load()
    except (OSError, SyntaxError, ValueError) as err:
        raise BadImageError(path, f"corrupt JPEG data ({err}); OpenCV would decode it with damaged blocks") from err


def read_image(path: str | os.PathLike, reduction: int = 1) -> np.ndarray:
    """Decode to RGB uint8 [H, W, 3]: gray is replicated, alpha dropped, 16-bit scaled, EXIF applied.

    ``reduction`` 2/4/8 lets libjpeg decode a JPEG directly at 1/2, 1/4, 1/8 size (ceil), several times
    faster for multi-megapixel photos that are resized down anyway; other formats ignore it."""
    path = Path(path)
    data = _read_bytes(path)
    # IMREAD_COLOR (not UNCHANGED) so OpenCV applies the JPEG EXIF orientation, converts gray to
    # 3 channels and drops alpha; ANYDEPTH keeps 16-bit samples so we can scale them ourselves.
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH
    if reduction in _REDUCED_FLAGS and _is_jpeg(data[:2].tobytes()):
        flags = _REDUCED_FLAGS[reduction]  # 8-bit JPEG: also applies EXIF orientation
    image = cv2.imdecode(data, flags)
    if image is None or image.size == 0:
        raise BadImageError(path, "OpenCV cannot decode it (corrupt or unsupported format)")
    if _is_jpeg(data[:2].tobytes()):
        _check_jpeg_stream(path, data, image.shape[:2])
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    image = to_uint8(image)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


AUTO_THRESHOLD = "auto"


def mask_threshold_for(mask: np.ndarray, threshold: float | str) -> float:
    """``auto``: half the value range — 0 for a 0/1 mask (max ≤ 1), else half the dtype's maximum (uint8 127,
    uint16 32767): a noisy or JPEG-compressed 0..255 mask read as ``> 0`` would be nearly all foreground."""
    if threshold != AUTO_THRESHOLD:
        return float(threshold)
    if mask.size == 0 or int(mask.max()) <= 1:
        return 0.0
    limit = np.iinfo(mask.dtype).max if np.issubdtype(mask.dtype, np.integer) else 1.0
    return float(limit) / 2 if limit > 1 else 0.5


def read_mask(path: str | os.PathLike, threshold: float | str = AUTO_THRESHOLD) -> np.ndarray:
    """Decode a foreground mask to bool [H, W]: ``value > threshold`` (``auto``: :func:`mask_threshold_for`,
    so 0/1 and 0/255 PNGs both work); colour masks are converted to gray first."""
    return read_mask_checked(path, threshold)[0]


def read_mask_checked(path: str | os.PathLike, threshold: float | str = AUTO_THRESHOLD) -> tuple[np.ndarray, float]:
    """:func:`read_mask` and the fraction of pixels strictly between the mask's min and max value (0 for a
    binary mask; a JPEG-compressed or anti-aliased one is well above 0)."""
    path = Path(path)
    data = _read_bytes(path)
    mask = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH)
    if mask is None or mask.size == 0:
        raise BadImageError(path, "OpenCV cannot decode the mask")
    if mask.ndim == 3:
        mask = mask.max(axis=2)
    low, high = mask.min(), mask.max()
    soft = float(((mask > low) & (mask < high)).mean()) if high > low else 0.0
    return mask > mask_threshold_for(mask, threshold), soft


def resize_mask_nearest(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of a bool mask (keeps it binary)."""
    if mask.shape == (height, width):
        return mask
    resized = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
    return resized.astype(bool)
