"""One namespace: echosynth.* installs beside Hugging Face's `evaluate`, and the `echosynth` command runs every verb."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from conftest import REPO

BIN = Path(sys.executable).parent
ECHOSYNTH = BIN / "echosynth"


def _run(args: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env, timeout=300, **kw)


def test_hugging_face_evaluate_and_echosynth_share_one_venv(tmp_path):
    """The dev extra installs Hugging Face's `evaluate` into the same venv; both import, each as itself."""
    code = ("import evaluate, echosynth.evaluate.metrics as m, echosynth.evaluate.fidelity\n"
            "print(evaluate.__file__); print(m.__file__); print(callable(evaluate.load))")
    proc = _run([sys.executable, "-c", code], tmp_path)
    assert proc.returncode == 0, proc.stderr
    hf, ours, loads = proc.stdout.split()
    assert "site-packages" in hf and Path(ours).resolve() == (REPO / "evaluate" / "metrics.py").resolve()
    assert loads == "True"
    # a script by path, from another directory, beside it
    proc = _run([sys.executable, str(REPO / "evaluate" / "fidelity.py"), "--help"], tmp_path)
    assert proc.returncode == 0 and "FID" in proc.stdout, proc.stderr


def test_every_package_folder_is_installed():
    """pyproject's explicit package list names every folder with an __init__.py, under echosynth."""
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    found = {"echosynth"}
    for top in ("gen", "classify", "evaluate", "pipelines", "reports"):
        assert cfg["package-dir"][f"echosynth.{top}"] == top
        found |= {"echosynth." + ".".join(p.parent.relative_to(REPO).parts) for p in (REPO / top).rglob("__init__.py")}
    assert listed == found


@pytest.mark.parametrize("verb, words", [("prepare", "phantom"), ("train", "improved DDPM"), ("sample", "synthetic set"),
                                         ("classify", "classifiers"), ("predict", "Classify new"), ("fidelity", "FID"),
                                         ("privacy", "copies"), ("embed", "t-SNE"), ("study", "study"),
                                         ("report", "HTML report"), ("export", "diffusers"), ("survey", "Streamlit")])
def test_echosynth_command_runs_each_verb(verb, words, tmp_path):
    """`echosynth VERB --help` is the script's own --help, from any directory."""
    proc = _run([str(ECHOSYNTH), verb, "--help"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert words in proc.stdout


def test_echosynth_command_lists_verbs_and_refuses_typos(tmp_path):
    proc = _run([str(ECHOSYNTH), "--help"], tmp_path)
    verbs = re.findall(r"^  (\w+) ", proc.stdout, re.M)
    assert proc.returncode == 0 and verbs == ["prepare", "train", "sample", "export", "classify", "predict", "fidelity",
                                              "privacy", "embed", "study", "report", "survey"]
    proc = _run([str(ECHOSYNTH), "trian"], tmp_path)
    assert proc.returncode == 2 and "did you mean 'train'" in proc.stderr
    proc = _run([sys.executable, "-m", "echosynth", "--version"], tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("echosynth 0.")


def test_echosynth_command_is_the_script(tmp_path):
    """A verb runs the script's main: same output files and exit codes as `python gen/prepare.py`."""
    out = tmp_path / "p"
    proc = _run([str(ECHOSYNTH), "prepare", "--source", "phantom", "--out", str(out), "--n", "16", "--size", "32"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (out / "manifest.csv").is_file()
    again = _run([str(ECHOSYNTH), "prepare", "--source", "phantom", "--out", str(out), "--n", "16", "--size", "32"], tmp_path)
    direct = _run([sys.executable, str(REPO / "gen" / "prepare.py"), "--source", "phantom", "--out", str(out), "--n", "16",
                   "--size", "32"], tmp_path)
    assert again.returncode == direct.returncode != 0  # a second run refuses to overwrite, both ways
    assert "--overwrite" in again.stderr and "--overwrite" in direct.stderr


def test_documented_script_paths_work_from_any_directory(tmp_path):
    """`accelerate launch gen/train.py` and `python pipelines/study.py` by path, from another directory."""
    proc = _run([str(BIN / "accelerate"), "launch", "--num_processes", "1", str(REPO / "gen" / "train.py"), "--help"],
                tmp_path)
    assert proc.returncode == 0 and "improved DDPM" in proc.stdout, proc.stderr
    proc = _run([sys.executable, str(REPO / "pipelines" / "study.py"), "--config",
                 str(REPO / "configs" / "study" / "tiny.yaml"), "--out", str(tmp_path / "s"), "--dry-run"], tmp_path)
    assert proc.returncode == 0 and "ddpm-n60" in proc.stdout, proc.stderr  # the preset paths resolve from the repo
