"""Classifier architectures: published parameter counts, shapes at small sizes, errors, checkpoints."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from echosynth.classify.models import (
    MODELS,
    build_classifier,
    load_classifier,
    model_info,
    view_loss,
)
from echosynth.classify.settings import inception_grid_sizes, inception_min_size, min_image_size
from echosynth.gen.core.checkpoint import count_parameters

# Published ImageNet reference counts (3 channels, 1,000 classes), as in torchvision's model cards.
PUBLISHED = {
    "vgg16": 138_357_544,
    "vgg16_bn": 138_365_992,
    "resnet18": 11_689_512,
    "densenet121": 7_978_856,
    "mobilenet_v2": 3_504_872,
    "inception_v3": 23_834_568,  # torchvision inception_v3(aux_logits=False, init_weights=False)
    "inception_v3_aux": 27_161_264,  # … with its auxiliary head (the torchvision default)
}
FEATURE_DIM = {"vgg16": 4096, "vgg16_bn": 4096, "resnet18": 512, "densenet121": 1024, "mobilenet_v2": 1280,
               "madani": 512, "small_cnn": 64, "inception_v3": 2048, "inception_v3_aux": 2048,
               "fid_inception_frozen": 2048, "fid_inception_frozen_mlp": 512}  # the frozen pool features; the MLP head's hidden layer


@pytest.mark.parametrize("arch", sorted(PUBLISHED))
def test_reference_parameter_count(arch):
    # Built once each, never run at 224 px: VGG16 alone is 138 M parameters.
    model = MODELS[arch](1000, in_channels=3)
    assert count_parameters(model) == PUBLISHED[arch]


def test_madani_is_about_four_million_parameters_at_60px():
    # Sectra thesis §2.5.1: "approximately 4 million parameters".
    n = count_parameters(build_classifier("madani", 15, 60))
    assert 3_500_000 < n < 4_500_000


@pytest.mark.parametrize("arch", sorted(set(MODELS) - {"vgg16_bn"}))  # vgg16_bn: vgg16 plus BatchNorm
def test_forward_and_features_shapes_single_channel(arch):
    torch.manual_seed(0)
    size = max(32, min_image_size(arch))  # InceptionV3: 75 px, 107 with the aux head
    model = build_classifier(arch, 4, size).eval()
    x = torch.rand(2, 1, size, size) * 2 - 1
    with torch.no_grad():
        logits, feats = model(x), model.features(x)
    assert logits.shape == (2, 4)
    assert feats.shape == (2, FEATURE_DIM[arch]) == (2, model.feature_dim)
    assert torch.isfinite(logits).all()


def test_other_sizes_and_grade_head():
    model = build_classifier("resnet18", 3, 48, grade_head=True).eval()
    with torch.no_grad():
        logits, grade = model(torch.zeros(2, 1, 48, 48), with_grade=True)
    assert logits.shape == (2, 3) and grade.shape == (2,)
    assert model.encoder_parameters() and all(p is not q for p in model.encoder_parameters()
                                              for q in model.grade_head.parameters())


def test_clear_errors():
    with pytest.raises(ValueError, match="unknown architecture 'vgg19'.*resnet18"):
        build_classifier("vgg19", 4, 32)
    with pytest.raises(ValueError, match="at least 32"):
        build_classifier("resnet18", 4, 16)
    model = build_classifier("madani", 4, 32).eval()
    with pytest.raises(ValueError, match=r"trained on 32×32 images but got 64×64"):
        model(torch.zeros(1, 1, 64, 64))
    with pytest.raises(ValueError, match="no grade head"):
        model(torch.zeros(2, 1, 32, 32), with_grade=True)


def test_checkpoint_round_trip(tmp_path):
    from echosynth.classify.loop import save_state
    from echosynth.gen.core.io import write_json

    torch.manual_seed(0)
    model = build_classifier("mobilenet_v2", 4, 32).eval()
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


# ----------------------------------------------------------------------------------------------
# InceptionV3: grid sizes, the minimum input, the auxiliary head


def test_inception_grids_and_minimum_input_size():
    # The reference layout: 35×35, 17×17, 8×8 grids at 299 px; an echo frame of 112 px gives 11, 5, 2.
    assert inception_grid_sizes(299) == (35, 17, 8) and inception_grid_sizes(112) == (11, 5, 2)
    assert inception_min_size(False) == 75 and inception_min_size(True) == 107
    m = build_classifier("inception_v3", 3, 75).eval()
    with torch.no_grad():
        assert m(torch.zeros(1, 1, 75, 75)).shape == (1, 3)
        # One pixel less and the layers themselves no longer fit: the bound is tight.
        with pytest.raises(RuntimeError):
            m.mixed_8(m.mixed_17(m.stem(torch.zeros(1, 1, 74, 74))))
        # The model says so in words instead of a shape traceback.
        raw = MODELS["inception_v3"](3)
        with pytest.raises(ValueError, match=r"at least 75×75 px, got 74×74"):
            raw(torch.zeros(1, 1, 74, 74))
    with pytest.raises(ValueError, match="too small for inception_v3: use at least 75 px"):
        build_classifier("inception_v3", 3, 74)
    with pytest.raises(ValueError, match="too small for inception_v3_aux: use at least 107 px"):
        build_classifier("inception_v3_aux", 3, 106)


def test_inception_aux_head_in_training_and_its_loss():
    torch.manual_seed(0)
    m = build_classifier("inception_v3_aux", 3, 112)
    x, y = torch.rand(2, 1, 112, 112) * 2 - 1, torch.tensor([0, 2])
    m.train()
    logits, aux = m(x)
    assert logits.shape == aux.shape == (2, 3)
    expected = F.cross_entropy(logits, y) + 0.4 * F.cross_entropy(aux, y)
    torch.testing.assert_close(view_loss((logits, aux), y), expected)
    torch.testing.assert_close(view_loss(logits, y), F.cross_entropy(logits, y))
    # The aux head is a head: not among the encoder parameters that transfer learning freezes.
    aux_ids = {id(p) for p in m.aux.parameters()}
    assert aux_ids and not aux_ids & {id(p) for p in m.encoder_parameters()}
    m.eval()
    with torch.no_grad():
        assert m(x).shape == (2, 3)  # eval: logits only


def test_inception_aux_pool_is_the_reference_one_at_299px():
    # At 299 px the aux head sees the 17×17 grid and pools it 5×5/stride 3 to 5×5, as the reference.
    m = MODELS["inception_v3_aux"](4).eval()
    g = torch.rand(1, 768, 17, 17)
    ref = F.avg_pool2d(g, 5, 3)
    assert ref.shape[-1] == 5
    with torch.no_grad():
        h = F.adaptive_avg_pool2d(m.aux.conv1(m.aux.conv0(ref)), 1)
        torch.testing.assert_close(m.aux(g), m.aux.fc(torch.flatten(h, 1)))


def test_torch_free_config_names_match_the_registry():
    # classify/settings.py keeps the architecture names without torch, for a fast --help.
    from echosynth.classify.settings import ARCHS, FROZEN_BACKBONES

    assert ARCHS == tuple(MODELS)
    assert set(FROZEN_BACKBONES) <= set(MODELS)


def test_classifier_help_and_config_errors_do_not_import_torch():
    code = ("import sys\nfrom echosynth.classify.settings import ClassifierTrainConfig\nfrom echosynth.gen.core.config import parse_config\n"
            "try:\n    parse_config(ClassifierTrainConfig, ['--train', 'a.csv', '--val', 'b.csv', '--arch', 'inception_v3',"
            " '--image_size', '64'])\nexcept SystemExit as e:\n    assert e.code == 2\n"
            "assert 'torch' not in sys.modules, 'torch imported'\nimport echosynth.classify.train\n"
            "assert 'torch' not in sys.modules, 'classify/train.py imports torch before parsing'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "image_size 64 is too small for inception_v3: use at least 75 px" in r.stderr
