"""Classifier architectures: published parameter counts, shapes at small sizes, errors, checkpoints."""

from __future__ import annotations

import pytest
import torch

from classify.models import MODELS, build_model, count_parameters, load_classifier, model_info

# Published ImageNet reference counts (3 channels, 1,000 classes), as in torchvision's model cards.
PUBLISHED = {
    "vgg16": 138_357_544,
    "vgg16_bn": 138_365_992,
    "resnet18": 11_689_512,
    "densenet121": 7_978_856,
    "mobilenet_v2": 3_504_872,
}
FEATURE_DIM = {"vgg16": 4096, "vgg16_bn": 4096, "resnet18": 512, "densenet121": 1024, "mobilenet_v2": 1280,
               "madani": 512}


@pytest.mark.parametrize("arch", sorted(PUBLISHED))
def test_reference_parameter_count(arch):
    # Built once each, never run at 224 px: VGG16 alone is 138 M parameters.
    model = MODELS[arch](1000, in_channels=3)
    assert count_parameters(model) == PUBLISHED[arch]


def test_madani_is_about_four_million_parameters_at_60px():
    # Sectra thesis §2.5.1: "approximately 4 million parameters".
    n = count_parameters(build_model("madani", 15, 60))
    assert 3_500_000 < n < 4_500_000


@pytest.mark.parametrize("arch", sorted(set(MODELS) - {"vgg16_bn"}))  # vgg16_bn: vgg16 plus BatchNorm
def test_forward_and_features_shapes_single_channel(arch):
    torch.manual_seed(0)
    model = build_model(arch, 4, 32).eval()
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        logits, feats = model(x), model.features(x)
    assert logits.shape == (2, 4)
    assert feats.shape == (2, FEATURE_DIM[arch]) == (2, model.feature_dim)
    assert torch.isfinite(logits).all()


def test_other_sizes_and_grade_head():
    model = build_model("resnet18", 3, 48, grade_head=True).eval()
    with torch.no_grad():
        logits, grade = model(torch.zeros(2, 1, 48, 48), with_grade=True)
    assert logits.shape == (2, 3) and grade.shape == (2,)
    assert model.encoder_parameters() and all(p is not q for p in model.encoder_parameters()
                                              for q in model.grade_head.parameters())


def test_clear_errors():
    with pytest.raises(ValueError, match="unknown architecture 'vgg19'.*resnet18"):
        build_model("vgg19", 4, 32)
    with pytest.raises(ValueError, match="at least 32"):
        build_model("resnet18", 4, 16)
    model = build_model("madani", 4, 32).eval()
    with pytest.raises(ValueError, match=r"trained on 32×32 images but got 64×64"):
        model(torch.zeros(1, 1, 64, 64))
    with pytest.raises(ValueError, match="no grade head"):
        model(torch.zeros(2, 1, 32, 32), with_grade=True)


def test_checkpoint_round_trip(tmp_path):
    from classify.training import save_state
    from gen.io import write_json

    torch.manual_seed(0)
    model = build_model("mobilenet_v2", 4, 32).eval()
    seed_dir = tmp_path / "run" / "seed-3"
    write_json(seed_dir / "model.json", model_info("mobilenet_v2", ["A2C", "A4C", "PLAX", "PSAX"], 32))
    save_state(model, seed_dir / "checkpoints" / "best.safetensors")
    loaded, info = load_classifier(tmp_path / "run")  # RUN resolves to its first seed
    assert info["seed_dir"] == str(seed_dir) and info["classes"][2] == "PLAX"
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x)) and torch.allclose(model.features(x), loaded.features(x))
    with pytest.raises(FileNotFoundError, match="last.safetensors"):
        load_classifier(seed_dir, which="last")
    with pytest.raises(FileNotFoundError, match="no model.json"):
        load_classifier(tmp_path)
