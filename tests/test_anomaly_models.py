"""Reverse-distillation building blocks: parameter counts against the reference numbers, shapes, the decoder
block, the frozen encoder, the loss forms, the anomaly map (against scipy) and the assembled rd / rd2t models."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from fgkd.models.anomaly.components.anomaly_map import (
    anomaly_map,
    cosine_distance_maps,
    fuse_maps,
    gaussian_blur,
    image_scores,
)
from fgkd.models.anomaly.components.bottleneck import MultiScaleFusion, OneClassEmbedding
from fgkd.models.anomaly.components.decoders import DeResNet, InverseBlock, InverseBlockDecoder
from fgkd.models.anomaly.components.encoder import FrozenEncoder, RandomEncoderWarning
from fgkd.models.anomaly.reverse_distillation.loss import (
    flat_cosine_loss,
    pixel_cosine_loss,
    reverse_distillation_loss,
)
from fgkd.models.anomaly.reverse_distillation.torch_model import ReverseDistillation


def millions(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def test_parameter_counts_match_the_reference_implementations():
    """anomaly_spec.md §1: official OCBE MFF 10.6 M + OCE 48.3 M (width 128/group), anomalib OCE 20.2 M
    (width 64), de_wide_resnet50_2 ≈ 24.9 M."""
    assert millions(MultiScaleFusion((256, 512, 1024))) == pytest.approx(10.6, abs=0.05)
    assert millions(OneClassEmbedding(3072, "bottleneck", 3, 128)) == pytest.approx(48.3, abs=0.05)
    assert millions(OneClassEmbedding(3072, "bottleneck", 3, 64)) == pytest.approx(20.2, abs=0.05)
    assert millions(DeResNet(2048, "bottleneck", (3, 4, 6), 128)) == pytest.approx(24.9, abs=0.05)


def test_bottleneck_and_decoder_shapes_at_256_px_levels():
    features = [torch.randn(1, 64, 16, 16), torch.randn(1, 128, 8, 8), torch.randn(1, 256, 4, 4)]  # ResNet18/34 at 64 px
    mff = MultiScaleFusion((64, 128, 256))
    fused = mff(features)
    assert fused.shape == (1, 768, 4, 4) and mff.out_channels == 768
    widened = MultiScaleFusion((64, 128, 256), 1024)  # paper 001's ResNet34 branch widened to the WRN width
    assert widened(features).shape == (1, 3072, 4, 4)
    embedding = OneClassEmbedding(768, "basic", 2)(fused)
    assert embedding.shape == (1, 512, 2, 2)
    out = DeResNet(512, "basic", (2, 2, 2))(embedding)
    assert [tuple(o.shape[1:]) for o in out] == [(64, 16, 16), (128, 8, 8), (256, 4, 4)]


def test_inverse_block_is_the_sum_of_its_two_branches_and_doubles_the_size():
    torch.manual_seed(0)
    block = InverseBlock(8, 4).eval()
    x = torch.randn(2, 8, 5, 5)
    y = block(x)
    assert y.shape == (2, 4, 10, 10)
    b1 = block.branch1[1](F.conv_transpose2d(x, block.branch1[0].weight, stride=2, padding=1))
    conv, bn, _, deconv, bn2 = block.branch2
    b2 = bn2(F.conv_transpose2d(torch.relu(bn(F.conv2d(x, conv.weight, padding=1))), deconv.weight, stride=2, padding=1))
    torch.testing.assert_close(y, torch.relu(b1 + b2))
    assert len(InverseBlock(8, 4, branch2_bn=False).branch2) == 4
    decoder = InverseBlockDecoder(32, (8, 16, 24))
    outs = decoder(torch.randn(1, 32, 2, 2))
    assert [tuple(o.shape[1:]) for o in outs] == [(8, 16, 16), (16, 8, 8), (24, 4, 4)]
    assert isinstance(decoder.d3[1], torch.nn.Conv2d) and decoder.d3[1].kernel_size == (1, 1)  # D3's extra 1×1


def test_frozen_encoder_stays_frozen_and_loads_torchvision_weights(tmp_path):
    import torchvision

    reference = torchvision.models.resnet18()  # random weights standing in for an ImageNet file
    torch.nn.init.normal_(reference.bn1.running_mean)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    encoder = FrozenEncoder("resnet18", weights=str(path))
    assert encoder.channels == (64, 128, 256) and encoder.strides == (4, 8, 16)
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not encoder.training and not any(m.training for m in encoder.modules())  # BN statistics never move
    x = torch.randn(2, 3, 64, 64)
    reference.eval()
    with torch.no_grad():
        h = reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))
        l1 = reference.layer1(h)
        l2 = reference.layer2(l1)
        l3 = reference.layer3(l2)
    for ours, theirs in zip(encoder(x), (l1, l2, l3), strict=True):
        torch.testing.assert_close(ours, theirs)
    with pytest.warns(RandomEncoderWarning, match="ImageNet"):
        FrozenEncoder("resnet18")
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not a resnet18 state dict"):
        FrozenEncoder("resnet18", weights=str(tmp_path / "bad.pth"))
    with pytest.raises(FileNotFoundError, match="model.encoder.weights"):
        FrozenEncoder("resnet18", weights=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="not supported"):
        FrozenEncoder("vgg16")


def test_loss_forms_match_their_formulas():
    torch.manual_seed(0)
    teacher = [torch.randn(2, 3, 4, 4), torch.randn(2, 5, 2, 2)]
    student = [torch.randn(2, 3, 4, 4), torch.randn(2, 5, 2, 2)]
    flat = 0.0
    for t, s in zip(teacher, student, strict=True):
        tn, sn = t.numpy().reshape(2, -1), s.numpy().reshape(2, -1)
        flat += float(np.mean(1 - (tn * sn).sum(1) / np.linalg.norm(tn, axis=1) / np.linalg.norm(sn, axis=1)))
    pixel = 0.0
    for t, s in zip(teacher, student, strict=True):
        tn, sn = t.numpy(), s.numpy()
        cos = (tn * sn).sum(1) / np.linalg.norm(tn, axis=1) / np.linalg.norm(sn, axis=1)
        pixel += float((1 - cos).mean())
    assert float(flat_cosine_loss(teacher, student)) == pytest.approx(flat, rel=1e-5)
    assert float(pixel_cosine_loss(teacher, student)) == pytest.approx(pixel, rel=1e-5)
    assert float(reverse_distillation_loss(teacher, teacher, "pixel")) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="flat, pixel|flat', 'pixel"):
        reverse_distillation_loss(teacher, student, "l2")


def test_anomaly_map_is_upsampled_summed_and_blurred_like_the_official_code():
    torch.manual_seed(0)
    teacher = [torch.randn(1, 4, 8, 8), torch.randn(1, 6, 4, 4)]
    student = [t + 0.3 * torch.randn_like(t) for t in teacher]
    maps = cosine_distance_maps(teacher, student)
    assert maps[0].shape == (1, 8, 8)
    torch.testing.assert_close(maps[1], 1 - F.cosine_similarity(teacher[1], student[1], dim=1))
    fused = fuse_maps(maps, (16, 16))
    expected = sum(F.interpolate(m[:, None], size=(16, 16), mode="bilinear", align_corners=True)[:, 0] for m in maps)
    torch.testing.assert_close(fused, expected)
    torch.testing.assert_close(fuse_maps(maps, (16, 16), "product"),
                               torch.prod(torch.stack([F.interpolate(m[:, None], size=(16, 16), mode="bilinear",
                                                                     align_corners=True)[:, 0] for m in maps]), 0))
    blurred = anomaly_map(teacher, student, (16, 16), sigma=4.0)
    np.testing.assert_allclose(blurred[0].numpy(), ndimage.gaussian_filter(fused[0].double().numpy(), sigma=4),
                               atol=1e-6)  # scipy's default 'reflect' border, 33-tap kernel
    big = torch.rand(3, 40, 52)
    np.testing.assert_allclose(gaussian_blur(big, 2.5).numpy(),
                               np.stack([ndimage.gaussian_filter(b, 2.5) for b in big.double().numpy()]), atol=1e-6)
    torch.testing.assert_close(image_scores(blurred), blurred.amax(dim=(-2, -1)))


@pytest.fixture(autouse=True)
def _quiet_random_encoders():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomEncoderWarning)
        yield


def test_single_teacher_rd_shapes_training_and_frozen_teacher():
    torch.manual_seed(0)
    model = ReverseDistillation("resnet18", decoder="de_resnet", oce_blocks=2)
    x = torch.randn(2, 3, 64, 64)
    teacher, student = model(x)
    assert [t.shape for t in teacher] == [s.shape for s in student]
    assert [t.shape[1] for t in teacher] == [64, 128, 256]
    before = {k: v.clone() for k, v in model.encoders.state_dict().items()}
    model.train()
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=1e-3)
    for _ in range(2):
        loss = model.loss(*model(x))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = model.encoders.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # teacher unchanged (weights and BN statistics)
    model.eval()
    maps, scores = model.predict(x)
    assert maps.shape == (2, 64, 64) and torch.allclose(scores, maps.amax(dim=(-2, -1)))


@pytest.mark.parametrize("fusion,fuse,attention", [("per_teacher", "iaff", True), ("per_teacher", "add", False),
                                                   ("concat_first", "iaff", True)])
def test_two_teacher_variants_rebuild_the_concatenated_teacher_maps(fusion, fuse, attention):
    model = ReverseDistillation("resnet18", "resnet18", decoder="inverse", attention=attention, r=8, fusion=fusion,
                                fuse=fuse, oce_blocks=1, loss="pixel")
    assert model.target_channels == (128, 256, 512)
    teacher, student = model(torch.randn(2, 3, 64, 64))  # train mode: MS-CAM's pooled BN needs 2+ samples
    assert [tuple(t.shape) for t in teacher] == [(2, 128, 16, 16), (2, 256, 8, 8), (2, 512, 4, 4)]
    assert [t.shape for t in teacher] == [s.shape for s in student]
    assert (model.iaff is not None) == (fusion == "per_teacher" and fuse == "iaff")
    assert len(model.mff) == (1 if fusion == "concat_first" else 2)


def test_paper_model_channels_and_bad_options():
    with pytest.raises(ValueError, match="two teachers need model.decoder=inverse"):
        ReverseDistillation("resnet18", "resnet18", decoder="de_resnet")
    with pytest.raises(ValueError, match="model.fusion"):
        ReverseDistillation("resnet18", fusion="sideways")
    with pytest.raises(ValueError, match="model.encoder: unknown keys"):
        ReverseDistillation({"name": "resnet18", "pretrained": True})
