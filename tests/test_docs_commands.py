"""Run every command block marked `<!-- runnable -->` in README.md and docs/*.md, at tiny size.

A marked block is the fenced ```bash block right after the marker line. Each file's blocks run in
document order in one fresh directory (so a block may use what an earlier one wrote), with the
repository's code folders and .venv linked in, `.venv/bin` (this interpreter's bin) first on PATH
and one thread per process. The command text is the document's; `TINY` only appends size flags
to the commands named, so that a documented 200-step training runs 4 steps.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MARKER = "<!-- runnable -->"
# Linked into the working directory so that relative paths in the docs resolve.
LINKED = ["gen", "classify", "evaluate", "pipelines", "reports", "configs", "benchmarks", "docs",
          "tests", ".venv"]

# Flags appended to each command that contains one of these keys (the config system lets a later
# flag override an earlier one): few images, a few steps, one epoch, few samples.
TINY = {
    "gen/prepare.py phantom": "--n 200 --size 32",
    "gen/train.py": "--steps 4 --checkpoint_every 2 --log_every 1 --sampling_steps 2",
    "gen/sample.py": "--per_class 4 --sampling_steps 2",
    "classify/train.py": "--epochs 1 --seeds 0",
    "evaluate/fidelity.py": "--kid_subsets 5 --n 8 --sampling_steps 2",
    "evaluate/privacy.py": "--mia_max 16",
}
BLOCK_TIMEOUT_S = 600  # per command; generous because CI machines are often shared


def runnable_blocks(text: str, name: str = "<text>") -> list[str]:
    """The bash blocks that follow a runnable marker, in document order."""
    lines = text.splitlines()
    blocks = []
    for i, line in enumerate(lines):
        if line.strip() != MARKER:
            continue
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        if j >= len(lines) or lines[j].strip() not in ("```bash", "```sh"):
            raise ValueError(f"{name}:{i + 1}: {MARKER} must be followed by a ```bash block")
        end = next((k for k in range(j + 1, len(lines)) if lines[k].strip() == "```"), None)
        if end is None:
            raise ValueError(f"{name}:{j + 1}: unterminated code block after {MARKER}")
        blocks.append("\n".join(lines[j + 1:end]))
    return blocks


def commands(block: str) -> list[str]:
    """Logical command lines of a block: continuations joined, comments and blank lines dropped."""
    out, current = [], ""
    for line in block.splitlines():
        current += line
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        code = _strip_comment(current).strip()
        if code:
            out.append(" ".join(code.split()))
        current = ""
    if current.strip():
        out.append(_strip_comment(current).strip())
    return out


def _strip_comment(line: str) -> str:
    """`line` without a trailing `# comment` (a # that starts a word outside quotes)."""
    quote = None
    for k, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (k == 0 or line[k - 1].isspace()):
            return line[:k]
    return line


def tiny(command: str) -> str:
    """`command` with the TINY flags of the script it runs appended."""
    for key, extra in TINY.items():
        if key in command:
            return f"{command} {extra}"
    return command


def test_extractor_finds_marked_blocks_only():
    text = "\n".join([
        "intro", "```bash", "python not-marked.py", "```",
        MARKER, "```bash", "python a.py --x 1 \\", "    --y 2   # why", "# just a comment",
        "python gen/train.py --config c.yaml", "```",
        MARKER, "", "```bash", "echo '#not a comment'", "```",
    ])
    blocks = runnable_blocks(text)
    assert len(blocks) == 2
    assert commands(blocks[0]) == ["python a.py --x 1 --y 2", "python gen/train.py --config c.yaml"]
    assert commands(blocks[1]) == ["echo '#not a comment'"]
    assert tiny("python gen/train.py --config c.yaml").endswith(TINY["gen/train.py"])
    with pytest.raises(ValueError, match="must be followed"):
        runnable_blocks(f"{MARKER}\n```python\nprint(1)\n```", "x.md")


def test_readme_marks_an_example_of_every_verb():
    """The README's examples are the tested chain: each verb's script appears in a marked block."""
    marked = "\n".join(runnable_blocks((REPO / "README.md").read_text(), "README.md"))
    for script in ["gen/prepare.py", "gen/train.py", "gen/sample.py", "classify/train.py",
                   "classify/predict.py", "evaluate/fidelity.py", "evaluate/privacy.py",
                   "evaluate/embed.py", "pipelines/study.py", "reports/build.py",
                   "evaluate/survey/build.py"]:
        assert script in marked, f"README.md: no runnable example of {script}"


@pytest.mark.timeout(1800)  # the README chain is ~2 min of CPU; a busy machine stretches it
@pytest.mark.parametrize("doc", [d for d in DOCS if MARKER in d.read_text()],
                         ids=lambda d: str(d.relative_to(REPO)))
def test_doc_commands_run(doc: Path, tmp_path: Path):
    """Every marked block of one file runs, in order, in one fresh directory."""
    for name in LINKED:
        if (REPO / name).exists():
            (tmp_path / name).symlink_to(REPO / name)
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg",
           "HOME": str(tmp_path / "home"), "PYTHONUNBUFFERED": "1"}
    rel = doc.relative_to(REPO)
    for n, block in enumerate(runnable_blocks(doc.read_text(), str(rel)), 1):
        for command in commands(block):
            run = tiny(command)
            proc = subprocess.run(["bash", "-eo", "pipefail", "-c", run], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
            tail = (proc.stdout + proc.stderr)[-3000:]
            assert proc.returncode == 0, f"{rel}, block {n}: `{run}` exited {proc.returncode}:\n{tail}"


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown file (lower case, punctuation dropped, spaces to dashes)."""
    out, fence = set(), False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and line.startswith("#"):
            out.add(re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-"))
    return out


def test_links_and_anchors_resolve():
    """Every relative link of the README, docs/ and benchmarks/README.md names a file (and heading) that exists."""
    bad = []
    for doc in [*DOCS, REPO / "benchmarks" / "README.md"]:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (doc.parent / path).resolve() if path else doc
            if not dest.exists():
                bad.append(f"{doc.relative_to(REPO)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                bad.append(f"{doc.relative_to(REPO)}: {target} (no such heading)")
    assert not bad, "broken links:\n" + "\n".join(bad)
