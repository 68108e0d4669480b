"""RT-DETR (r18 / r50 / l): backbones, hybrid encoder, decoder with denoising, set criterion; registered in
:mod:`fgkd.models.detectors.rtdetr.model`."""

from fgkd.models.detectors.rtdetr import model as model  # noqa: F401 - registers rtdetr_r18/r50/l
