"""UNet presets, EMA, checkpoints (atomic, pruned, round trip) and load_run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from echosynth.gen.core.checkpoint import (
    count_parameters,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from echosynth.gen.core.config import ConfigError, to_dict
from echosynth.gen.core.io import write_json
from echosynth.gen.diffusion.ema import EMA, ema_decay_at
from echosynth.gen.diffusion.loop import DiffusionConfig, TrainConfig
from echosynth.gen.diffusion.trained import load_run
from echosynth.gen.diffusion.unet import PRESETS, ClassUNet, ModelConfig, preset_table

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("learn_sigma,out_channels", [(True, 2), (False, 1)])
def test_tiny_forward_shape_and_class_conditioning(learn_sigma, out_channels):
    torch.manual_seed(0)
    m = ClassUNet("tiny", 16, num_classes=4, learn_sigma=learn_sigma).eval()
    assert m.unet.class_embedding.num_embeddings == 5 and m.null_class == 4  # + the null class for CFG
    x, t = torch.randn(3, 1, 16, 16), torch.tensor([0, 500, 999])
    with torch.no_grad():
        a = m(x, t, torch.tensor([0, 1, 4]))
        b = m(x, t, torch.tensor([2, 3, 4]))
    assert a.shape == (3, out_channels, 16, 16)
    assert not torch.allclose(a[0], b[0]) and torch.allclose(a[2], b[2])  # the label matters; same label, same output


def test_thesis_preset_architecture_on_meta_device():
    with torch.device("meta"):
        m = ClassUNet("thesis", 112, 4, True)
    p = PRESETS["thesis"]
    assert p.channels == (128, 256, 384, 512) and p.layers_per_block == 3
    kinds = [type(b).__name__ for b in m.unet.down_blocks]
    # levels at 112, 56, 28, 14 px: attention at 28×28 and 14×14 (4× and 8× downsampled)
    assert kinds == ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"]
    assert 100e6 < count_parameters(m) < 140e6
    table = preset_table()
    assert all(name in table for name in PRESETS) and "M params" in table


def test_bad_presets_and_sizes_are_clear():
    with pytest.raises(ConfigError, match="unknown model preset 'huge'"):
        ClassUNet("huge", 32, 4, True)
    with pytest.raises(ConfigError, match="divisible by 8"):
        ClassUNet("thesis", 100, 4, True)


def test_ema_update_formula():
    torch.manual_seed(0)
    m = torch.nn.Linear(3, 2)
    ema = EMA(m, decay=0.9, warmup=False)
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)
    ema.update(m, step=100)
    for k, v in m.state_dict().items():
        torch.testing.assert_close(ema.state_dict()[k], 0.9 * before[k] + 0.1 * v)
    assert ema_decay_at(0, 0.9999, True) == pytest.approx(0.1) and ema_decay_at(10**6, 0.9999, True) == 0.9999


def _fake_run(tmp_path, cfg: TrainConfig, classes, steps=(5, 10)):
    """A run directory with random weights, as gen/train.py lays it out."""
    run = tmp_path / "run"
    run.mkdir()
    write_json(run / "config.json", to_dict(cfg))
    write_json(run / "classes.json", classes)
    torch.manual_seed(0)
    m = ClassUNet(cfg.model.preset, cfg.model.image_size, len(classes), cfg.diffusion.learn_sigma)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    m(torch.randn(2, 1, cfg.model.image_size, cfg.model.image_size), torch.tensor([1, 2]), torch.tensor([0, 1])).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    for s in steps:
        save_checkpoint(run, s, model=m.state_dict(), ema=EMA(m, 0.9).state_dict(), optimizer=opt.state_dict(),
                        scheduler=sched.state_dict(), state={"note": s})
    return run, m, opt


def test_checkpoint_round_trip_prune_and_load_run(tmp_path):
    cfg = TrainConfig(data="x.csv", model=ModelConfig("tiny", 16), diffusion=DiffusionConfig(num_timesteps=50))
    run, m, opt = _fake_run(tmp_path, cfg, ["A2C", "PSAX"], steps=(5, 10, 15, 20, 25, 30))
    assert list_checkpoints(run) == [5, 10, 15, 20, 25, 30]
    c = load_checkpoint(run / "checkpoints" / "step-0000030")
    assert c["state"]["step"] == 30 and c["state"]["note"] == 30 and "torch" in c["state"]["rng"]
    for k, v in m.state_dict().items():
        assert torch.equal(c["model"][k], v)
    opt2 = torch.optim.AdamW(ClassUNet("tiny", 16, 2, True).parameters(), lr=1e-3)
    opt2.load_state_dict(c["optimizer"])
    for (_, s1), (_, s2) in zip(sorted(opt.state_dict()["state"].items()), sorted(opt2.state_dict()["state"].items())):
        assert all(torch.equal(s1[k], s2[k]) for k in s1)
    # keep the newest 2 plus every multiple of 10
    assert prune_checkpoints(run, keep_last=2, keep_every=10) == [10, 20, 25, 30]
    assert list_checkpoints(run) == [10, 20, 25, 30]
    # a half-written checkpoint (no state.json) is invisible
    (run / "checkpoints" / "step-0000040").mkdir()
    assert list_checkpoints(run)[-1] == 30
    r = load_run(run)
    assert r.step == 30 and r.classes == ["A2C", "PSAX"] and r.image_size == 16 and r.weights == "ema"
    assert r.diffusion.num_timesteps == 50 and r.diffusion.learn_sigma
    assert not r.model.training and r.model.out_channels == 2
    r10 = load_run(run, weights="model", step=10)
    assert r10.step == 10
    with pytest.raises(FileNotFoundError, match="no checkpoint at step 7"):
        load_run(run, step=7)
    with pytest.raises(ValueError, match="'ema' or 'model'"):
        load_run(run, weights="best")
    np.testing.assert_array_equal(r.model.unet.conv_in.weight.numpy(), c["ema"]["unet.conv_in.weight"].numpy())
