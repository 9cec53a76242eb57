"""One name, one meaning: no public top-level class is defined in two modules (read from the source with `ast`)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("gen", "classify", "evaluate", "pipelines", "reports")

# Public class names defined in more than one module, each with why; the test fails when one is no
# longer duplicated, so that its entry goes with the fix. Empty since the two ImageSet classes
# (classify/datasets.py, evaluate/image_sets.py) became gen/data/image_sets.py's one.
KNOWN_DUPLICATES: dict[str, str] = {}


def public_classes() -> dict[str, list[str]]:
    """Public top-level class name -> the modules (repository paths) that define it."""
    found: dict[str, list[str]] = defaultdict(list)
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            for node in ast.parse(path.read_text(encoding="utf-8"), filename=str(path)).body:
                if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                    found[node.name].append(str(path.relative_to(REPO)))
    return dict(found)


def test_no_public_class_name_is_defined_twice():
    classes = public_classes()
    assert "ImageSet" in classes and "ManifestError" in classes  # the walk sees the packages
    twice = {name: where for name, where in classes.items() if len(where) > 1 and name not in KNOWN_DUPLICATES}
    assert not twice, "public classes defined in more than one module (rename one or share one): " + "; ".join(
        f"{n} in {', '.join(w)}" for n, w in sorted(twice.items()))
    assert classes["ImageSet"] == ["gen/data/image_sets.py"]


def test_known_duplicates_are_still_duplicates():
    classes = public_classes()
    gone = [n for n in KNOWN_DUPLICATES if len(classes.get(n, [])) < 2]
    assert not gone, f"no longer duplicated, delete from KNOWN_DUPLICATES: {gone}"


def _stem(name: str) -> str:
    """A module name without the endings that make near-twins (train/training/trainer, config/configs)."""
    for end in ("ing", "er", "s"):
        if name.endswith(end) and len(name) - len(end) >= 4:
            return name[: -len(end)]
    return name


def test_no_two_modules_of_a_folder_are_near_twins():
    """train.py beside training.py, or config.py beside configs.py, leaves a reader guessing which is which."""
    assert _stem("training") == _stem("train") == _stem("trainer") and _stem("configs") == _stem("config")
    twins = []
    for folder in sorted({p.parent for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}):
        stems = defaultdict(list)
        for path in sorted(folder.glob("*.py")):
            stems[_stem(path.stem)].append(path.name)
        twins += [f"{folder.relative_to(REPO)}: {', '.join(names)}" for names in stems.values() if len(names) > 1]
    assert not twins, "near-twin module names (rename one so that the names say what differs): " + "; ".join(twins)
