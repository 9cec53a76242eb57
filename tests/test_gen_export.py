"""gen/export.py: the diffusers folder reloads with diffusers alone and reproduces echosynth's samples seed for seed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from echosynth.gen.core.checkpoint import save_checkpoint
from echosynth.gen.core.config import to_dict
from echosynth.gen.core.io import write_json
from echosynth.gen.data.dataset import to_uint8
from echosynth.gen.diffusion.ema import EMA
from echosynth.gen.diffusion.settings import DiffusionConfig, TrainConfig
from echosynth.gen.diffusion.synthesis import image_seeds, sample_images
from echosynth.gen.diffusion.trained import load_run
from echosynth.gen.diffusion.unet import ClassUNet, ModelConfig
from echosynth.gen.export import main as export_main

CLASSES = ["A2C", "A4C", "PSAX"]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_run(root, learn_sigma, schedule):
    cfg = TrainConfig(data=str(root / "gone.csv"), model=ModelConfig("tiny", 16), cfg_dropout=0.1,
                      diffusion=DiffusionConfig(num_timesteps=100, learn_sigma=learn_sigma, schedule=schedule))
    run = root / "run"
    run.mkdir()
    write_json(run / "config.json", to_dict(cfg))
    write_json(run / "classes.json", CLASSES)
    torch.manual_seed(1)
    m = ClassUNet("tiny", 16, len(CLASSES), learn_sigma)
    with torch.no_grad():  # larger random outputs than the init's, so the variance half matters
        for p in m.parameters():
            p.add_(0.02 * torch.randn_like(p))
    save_checkpoint(run, 7, model=m.state_dict(), ema=EMA(m).state_dict(),
                    optimizer=torch.optim.AdamW(m.parameters()).state_dict(), scheduler={}, state={})
    return run


def diffusers_sample(folder, labels, seeds, steps):
    """The model card's loop: diffusers' UNet and scheduler, one generator per image."""
    from diffusers import DDPMScheduler, UNet2DModel

    unet = UNet2DModel.from_pretrained(str(folder / "unet")).eval()
    sched = DDPMScheduler.from_pretrained(str(folder / "scheduler"))
    sched.set_timesteps(steps)
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    S = unet.config.sample_size
    x = torch.cat([torch.randn((1, unet.config.in_channels, S, S), generator=g) for g in gens])
    y = torch.as_tensor(labels)
    with torch.no_grad():
        for t in sched.timesteps:
            out = unet(x, t.expand(len(x)), class_labels=y).sample
            x = sched.step(out, t, x, generator=gens).prev_sample
    return to_uint8(x)


@pytest.mark.parametrize("learn_sigma, schedule", [(True, "linear"), (False, "cosine")])
def test_export_round_trip_reproduces_samples(learn_sigma, schedule, tmp_path, capsys):
    run = make_run(tmp_path, learn_sigma, schedule)
    out = tmp_path / "export"
    assert export_main([str(run), "--out", str(out)]) == 0
    sched_cfg = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert sched_cfg["_class_name"] == "DDPMScheduler" and sched_cfg["num_train_timesteps"] == 100
    assert sched_cfg["variance_type"] == ("learned_range" if learn_sigma else "fixed_small")
    loaded = load_run(run)
    assert np.allclose(sched_cfg["trained_betas"], loaded.diffusion.betas, rtol=0, atol=1e-15)
    meta = json.loads((out / "echosynth.json").read_text())
    assert meta["classes"] == CLASSES and meta["null_class"] == 3 and meta["step"] == 7
    card = (out / "README.md").read_text()
    assert all(f"| {i} | {c} |" in card for i, c in enumerate(CLASSES)) and "gone.csv" in card

    labels = np.array([0, 1, 2, 2, 0])
    seeds = image_seeds(5, range(len(labels)))
    ours = sample_images(loaded, labels, seeds, steps=6)
    theirs = diffusers_sample(out, labels, seeds, steps=6)
    assert ours.std() > 5  # not a blank image that would match anything
    assert np.array_equal(ours, theirs)
    # a different seed gives a different image: the match is not vacuous
    assert not np.array_equal(theirs[:1], diffusers_sample(out, labels[:1], seeds[1:2], steps=6))


def test_export_refuses_an_existing_output_and_a_missing_run(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("keep")
    assert export_main([str(tmp_path / "nope"), "--out", str(tmp_path / "y")]) == 2
    assert "not a diffusion run" in capsys.readouterr().err
    run = make_run(tmp_path, True, "linear")
    assert export_main([str(run), "--out", str(tmp_path / "x")]) == 2
    assert "--overwrite" in capsys.readouterr().err and (tmp_path / "x" / "f").read_text() == "keep"
