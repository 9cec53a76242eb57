"""classify/train.py --resume: Ctrl-C stops between steps with the command that continues, and the resumed
run ends with exactly the weights of the uninterrupted one; finished seeds are kept; bad resumes are refused."""

from __future__ import annotations

import json
import re
import shlex

import pytest
import torch
from safetensors.torch import load_file

from conftest import PYTHON, interrupt_after_first_stats, run_cli
from echosynth.classify.resume import epoch_dirs, load_epoch_state, save_epoch_state

ENV = {"OMP_NUM_THREADS": "1"}
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # main() in-process sets one thread; restored after
EPOCHS = 4
# MobileNetV2 (dropout, so the RNG must be restored) with augmentation, SGD + StepLR (momentum and LR state).
TINY = ["--config", "configs/classify/quick.yaml", "--arch", "mobilenet_v2", "--epochs", str(EPOCHS), "--threads", "1",
        "--progress", "false", "--optimizer", "sgd", "--lr", "0.01", "--schedule", "step", "--step_size", "2",
        "--gamma", "0.5", "--augment.enabled", "true", "--global_batch", "8"]


def args(split_dir, run_dir, *extra):
    return [*TINY, "--train", f"real:{split_dir / 'train_60.csv'}", "--val", str(split_dir / "val.csv"),
            "--run_dir", str(run_dir), *extra]


@pytest.fixture(scope="module")
def full_run(split_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("clf-resume") / "full"
    run_cli([PYTHON, "classify/train.py", *args(split_dir, run)], env=ENV)
    return run


def stats(run):
    return [json.loads(line) for line in (run / "seed-0" / "stats.jsonl").read_text().splitlines()]


def test_sigint_then_resume_gives_the_uninterrupted_weights(full_run, split_dir, tmp_path):
    run = tmp_path / "cut"
    code, err = interrupt_after_first_stats([PYTHON, "classify/train.py", *args(split_dir, run)],
                                            run / "seed-0" / "stats.jsonl", env=ENV)
    assert code == 130, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if "continue with:" in ln]
    assert len(lines) == 1 and "SIGINT: stopped in seed 0 view epoch" in lines[0], err
    assert not (run / "seed-0" / "metrics.json").exists()
    done = [e for e, _ in epoch_dirs(run / "seed-0", "view")]
    assert len(done) == 1 and 1 <= done[0] < EPOCHS  # one rolling resume checkpoint
    cmd = shlex.split(lines[0].split("continue with: ")[1])
    assert cmd[:2] == ["python", "classify/train.py"] and cmd[-2:] == ["--resume", "latest"]
    proc2 = run_cli([PYTHON, *cmd[1:]], env=ENV)
    assert "finished earlier" not in proc2.stdout
    for name in ("last", "best"):
        a = load_file(str(full_run / "seed-0" / "checkpoints" / f"{name}.safetensors"))
        b = load_file(str(run / "seed-0" / "checkpoints" / f"{name}.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    sa, sb = stats(full_run), stats(run)
    assert [r["epoch"] for r in sb] == list(range(1, EPOCHS + 1))
    assert [(r["loss"], r["lr"], r["best_epoch"]) for r in sa] == [(r["loss"], r["lr"], r["best_epoch"]) for r in sb]
    assert json.loads((run / "summary.json").read_text()) == json.loads((full_run / "summary.json").read_text())


def test_resuming_a_finished_run_keeps_its_seeds_and_bad_resumes_are_refused(full_run, split_dir, capsys):
    from echosynth.classify.train import main

    before = (full_run / "summary.json").read_text()
    main(args(split_dir, full_run, "--resume", "latest"))  # in-process: a finished seed trains nothing
    assert "seed 0: finished earlier" in capsys.readouterr().out and (full_run / "summary.json").read_text() == before
    assert main(args(split_dir, full_run)) == 1
    assert "pass --resume latest to continue it or --overwrite" in capsys.readouterr().err
    assert main(args(split_dir, full_run, "--resume", "latest", "--lr", "0.5")) == 1
    assert re.search(r"classify/train.py: error: .*cannot resume, the config differs .* in: lr", capsys.readouterr().err)
    assert (full_run / "summary.json").read_text() == before


def test_epoch_state_round_trip_and_a_damaged_newest_is_skipped(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Dropout(0.5))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, 0.5)
    for epoch in (1, 2):
        net(torch.randn(5, 3)).sum().backward()
        opt.step()
        sched.step()
        save_epoch_state(tmp_path, "view", epoch, net, opt, sched, 0.5 * epoch, epoch, [{"epoch": epoch}])
    assert [e for e, _ in epoch_dirs(tmp_path, "view")] == [2]  # older ones are dropped
    want = {k: v.clone() for k, v in net.state_dict().items()}
    after = torch.rand(3)
    net2 = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Dropout(0.5))
    opt2 = torch.optim.SGD(net2.parameters(), lr=0.1, momentum=0.9)
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, 1, 0.5)
    assert load_epoch_state(tmp_path, "view", net2, opt2, sched2) == (2, 1.0, 2, [{"epoch": 2}])
    assert all(torch.equal(want[k], v) for k, v in net2.state_dict().items())
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.025) and sched2.last_epoch == 2
    assert torch.equal(torch.rand(3), after)  # the RNG is back where it was at the save
    assert load_epoch_state(tmp_path, "grade", net2, opt2, sched2) is None
    # a damaged newest checkpoint: warned about by name, an older intact one is used
    save_epoch_state(tmp_path, "view", 3, net, opt, sched, 0.1, 3, [])
    (tmp_path / "checkpoints" / "epoch-view-0003" / "model.safetensors").write_bytes(b"\0" * 10)
    (tmp_path / "checkpoints" / "epoch-view-0002").mkdir(exist_ok=True)
    warnings = []
    assert load_epoch_state(tmp_path, "view", net2, opt2, sched2, warn=warnings.append) is None  # 0002 was dropped
    assert "epoch-view-0003/model.safetensors" in warnings[0]
