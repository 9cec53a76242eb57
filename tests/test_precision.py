"""Precision that means what it says (issue 23): `auto` from the CPU's flags, study stages in the study's
precision, bf16 loss terms against fp32, and torch.compile's eager fallback."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from conftest import PYTHON, REPO, run_cli
from echosynth.gen.core.config import build
from echosynth.gen.core.hardware import Compiled, autocast, want_compile
from echosynth.gen.core.launcher import auto_precision, cpu_native_bf16, resolve_precision
from echosynth.gen.diffusion.process import Diffusion

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FLAGS = "fpu vme sse sse2 avx avx2 avx512f"


def _cpuinfo(tmp_path, extra: str) -> str:
    p = tmp_path / "cpuinfo"
    p.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: {FLAGS} {extra}\n\nprocessor\t: 1\n")
    return str(p)


@pytest.mark.parametrize("extra, flag", [("amx_tile amx_bf16", "amx_bf16"), ("avx512_bf16", "avx512_bf16"), ("", None)])
def test_auto_is_bf16_exactly_on_cpus_with_native_bf16(tmp_path, monkeypatch, extra, flag):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)  # not under a launcher
    info = _cpuinfo(tmp_path, extra)
    assert cpu_native_bf16(info) == flag
    monkeypatch.setattr("echosynth.gen.core.launcher.CPUINFO", Path(info))
    mp, where = resolve_precision("auto", cuda=False, bf16_ok=False)
    if flag:
        assert (mp, where) == ("bf16", f"auto: bf16 on a CPU with native bf16 ({flag})")
    else:
        assert mp == "no" and where.startswith("auto: fp32 on a CPU without native bf16")
    assert resolve_precision("auto", cuda=True, bf16_ok=True) == ("bf16", "auto: bf16 on CUDA")
    assert resolve_precision("auto", cuda=True, bf16_ok=False)[0] == "no"
    assert resolve_precision("no", cuda=False, bf16_ok=False) == ("no", "--mixed_precision no")
    assert cpu_native_bf16(tmp_path / "missing") is None  # no /proc/cpuinfo (not Linux): fp32
    assert auto_precision(False, False, None)[0] == "no"


def test_a_study_ddpm_stage_runs_in_the_studys_precision(split_dir, tmp_path):
    """The launcher no longer forces fp32: the stage command carries the study's precision to the script."""
    from echosynth.gen.core.config import to_dict
    from echosynth.gen.core.io import write_json
    from echosynth.pipelines.config import StudyConfig
    from echosynth.pipelines.graph import build_graph, stage_config

    def ddpm_stage(precision):
        cfg = build(StudyConfig, None, {"name": "t", "dataset.subsets": [60], "ddpm.mixed_precision": precision})
        stages = build_graph(cfg, tmp_path / precision)
        return [s for s in stages if s.name.startswith("ddpm-")][0], [s for s in stages if s.name.startswith("sample-")][0]

    for precision in ("no", "bf16", "auto"):
        for stage in ddpm_stage(precision):
            script = next(i for i, a in enumerate(stage.command) if str(a).endswith(".py"))
            assert "--mixed_precision" not in map(str, stage.command[:script])  # nothing at the launcher
            assert stage.settings.mixed_precision == precision  # the stage's config file carries it
    # Run the `auto` study's DDPM stage for two steps: auto resolves as on this machine, not to the launcher's "no".
    stage, _ = ddpm_stage("auto")
    run = tmp_path / "run"
    write_json(stage.config_file, to_dict(stage_config(stage.settings, {
        "data": str(split_dir / "train.csv"), "run_dir": str(run), "steps": 2, "model.image_size": 16, "log_every": 1,
        "sample_per_class": 0, "compile": False})))
    run_cli(list(map(str, stage.command)),
            cwd=REPO, env={"OMP_NUM_THREADS": "1", "HF_HOME": str(tmp_path / "hf")}, timeout=300)
    want, why = auto_precision(False, False, cpu_native_bf16())
    assert f"precision {want} ({why})" in (run / "log.txt").read_text()


def test_bf16_hybrid_loss_terms_stay_near_fp32():
    """The UNet forward in bf16, the loss in fp32: mse and vb within a few per cent of the fp32 terms."""
    from echosynth.gen.diffusion.unet import ClassUNet

    torch.manual_seed(0)
    d = Diffusion(1000, "linear", True)
    m = ClassUNet("tiny", 16, 3, True).eval()
    x0 = torch.rand(8, 1, 16, 16) * 2 - 1
    noise, t, y = torch.randn_like(x0), torch.tensor([0, 5, 50, 200, 400, 600, 800, 999]), torch.arange(8) % 3
    x_t = d.q_sample(x0, t, noise)
    with torch.no_grad():
        out32 = m(x_t, t, y)
        with autocast("cpu", "bf16"):
            out16 = m(x_t, t, y)
    assert out16.dtype == torch.bfloat16
    a, b = d.losses(out32, x0, noise, t), d.losses(out16.float(), x0, noise, t)
    assert all(v.dtype == torch.float32 for v in b.values())
    for k in ("mse", "vb", "loss"):
        assert torch.allclose(a[k], b[k], rtol=0.05, atol=1e-3), (k, a[k], b[k])


def test_compile_decision_and_eager_fallback_warns_once():
    assert want_compile("auto", "cuda", 10)[0] and not want_compile("auto", "cpu", 100)[0]
    assert want_compile("auto", "cpu", 10**6)[0] and want_compile(True, "cpu", 1)[0] and not want_compile(False, "cuda", 10**6)[0]
    assert not want_compile("auto", "cpu", 10**6, training=True)[0] and want_compile("auto", "cuda", 10, training=True)[0]
    assert want_compile(True, "cpu", 1, training=True)[0]
    net = torch.nn.Linear(3, 2)
    logged: list[str] = []
    # a backend that cannot compile: the first call falls back to eager, with one warning and one log line
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        c = Compiled(net, log=logged.append, backend=_failing_backend)
        x = torch.randn(4, 3)
        assert torch.equal(c(x), net(x)) and torch.equal(c(x), net(x))
    assert len([w for w in caught if "torch.compile failed" in str(w.message)]) == 1
    assert len(logged) == 1 and "running eager" in logged[0]
    assert c.out_features == 2 and set(dict(c.named_parameters())) == {"module.weight", "module.bias"}


def _failing_backend(gm, example_inputs):
    raise RuntimeError("no compiler here")



def test_ddpm_speed_benchmark_runs_with_precision_compile_and_sampler(tmp_path):
    """benchmarks/ddpm_speed.py (the prepared GPU benchmark) runs on CPU at a tiny size and records its settings."""
    import json

    out = tmp_path / "speed.json"
    run_cli([PYTHON, "benchmarks/ddpm_speed.py",
             "--preset", "tiny", "--image_size", "16", "--batch", "2", "--train_steps", "1", "--sample_batch", "2",
             "--sample_steps", "1", "--sample_evals", "2", "--warmup", "0", "--flops_presets", "tiny",
             "--peak_tflops", "1", "--out", str(out)], env={"OMP_NUM_THREADS": "1"}, timeout=300)
    rec = json.loads(out.read_text())
    assert rec["sampler"] == "dpm++2m-sde" and rec["compile"] is False and rec["precision"] in ("no", "bf16")
    assert rec["results"]["sample_images_per_s"] > 0 and 0 < rec["results"]["unet_forward_share_of_bf16_peak"] < 1
