"""The import layers of docs/architecture.md, read from the source with `ast` (function-local imports included).

    foundation (echosynth.gen.core.*) <- data (echosynth.gen.data.*) <- diffusion (echosynth.gen.diffusion.*
      and the gen scripts) <- classify <- evaluate <- pipelines <- the echosynth command (echosynth.cli)

A module may import its own layer and the layers below it. `reports` builds HTML from run-directory
files and imports the foundation only. Imports form no cycle, not even through function-local ones.
Every import of a repository module names it under `echosynth.`.

Imports of repository modules are at the module top, except where a script defers a heavy one until
after parsing, so that --help and config errors answer without torch (test_local_imports_defer_heavy_modules).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("gen", "classify", "evaluate", "pipelines", "reports")  # folders at the top, echosynth.<folder> installed
RANK = {"foundation": 0, "data": 1, "diffusion": 2, "classify": 3, "evaluate": 4, "pipelines": 5, "command": 6}

# Imports that break the layers, (src, dst) -> why, each to be removed with its fix; the test fails
# when one disappears, so the dict only shrinks. Empty: every import follows the layers.
KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {}

# Third-party packages slow enough to import (0.1-2 s here) that a script defers what loads them until
# it has parsed its arguments; TORCH: the ones that load torch.
TORCH = ("torch", "accelerate", "diffusers", "safetensors.torch", "torch_fidelity")
HEAVY = (*TORCH, "pandas", "scipy", "sklearn", "matplotlib")

# Function-local imports of repository modules that test_local_imports_defer_heavy_modules does not
# allow, (src, dst) -> why; the test fails when one is no longer needed. Empty: none is needed.
LOCAL_IMPORT_EXCEPTIONS: dict[tuple[str, str], str] = {}


def layer(module: str) -> str:
    """The layer a module of the repository belongs to (its folder inside gen/, else its package)."""
    parts = module.split(".")
    if parts[0] != "echosynth":
        raise ValueError(f"{module}: not an echosynth module")
    if len(parts) == 1 or parts[1] not in PACKAGES:
        return "command"  # echosynth, echosynth.cli
    if parts[1] == "gen":
        sub = parts[2] if len(parts) > 2 else "core"  # echosynth.gen itself: an empty package
        return {"core": "foundation", "data": "data"}.get(sub, "diffusion")
    return parts[1]


def modules() -> dict[str, Path]:
    """Every module of echosynth (the five folders and echosynth/): dotted name under echosynth -> file."""
    out = {}
    for pkg in (*PACKAGES, "echosynth"):
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts if pkg == "echosynth" else ["echosynth", *parts])] = path
    return out


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: dict) -> list[str]:
    """The repository modules an import statement names (`from a import b` names a.b if it is a module)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: resolve against this module's package
            pkg = module.split(".") if is_package else module.split(".")[:-1]
            pkg = pkg[:len(pkg) - (node.level - 1)]
            base = ".".join(pkg + ([base] if base else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    out = []
    for name in names:
        while name and name not in known:  # `import echosynth.gen.data.phantom.x` -> the longest known prefix
            name = name.rpartition(".")[0]
        if name:
            out.append(name)
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_level(body: list[ast.stmt]):
    """Import statements that run when the module is imported (not inside functions or classes)."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and not _is_type_checking(node):
            yield from _module_level(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            yield from _module_level(node.body + node.orelse + node.finalbody
                                     + [s for h in node.handlers for s in h.body])


def import_graph(module_level_only: bool = False) -> dict[str, set[str]]:
    """module -> the repository modules it imports (all imports, or module-level ones only)."""
    known = modules()
    graph = {}
    for name, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        nodes = (_module_level(tree.body) if module_level_only
                 else (n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))))
        graph[name] = {t for n in nodes for t in _targets(n, name, path.name == "__init__.py", known)
                       if t != name}
    return graph


def allowed(src: str, dst: str) -> bool:
    """Whether module `src` may import module `dst` under the layer order."""
    a, b = layer(src), layer(dst)
    if a == "reports":
        return b in ("foundation", "reports")
    if b == "reports":
        return False
    return RANK[b] <= RANK[a]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_graph_reader_resolves_imports():
    """The reader sees function-local and relative imports and maps names to modules."""
    graph = import_graph()
    assert "echosynth.gen.core.io" in graph["echosynth.gen.core.rundir"]
    assert "echosynth.gen.data.manifest" in graph["echosynth.gen.data.dataset"] or "echosynth.gen.data.manifest" in graph["echosynth.gen.data.build"]
    assert "echosynth.gen.diffusion.loop" in graph["echosynth.gen.train"]  # `from echosynth.gen.diffusion.loop import train` inside main(), after parsing
    assert "echosynth.gen.diffusion.loop" not in import_graph(module_level_only=True)["echosynth.gen.train"]
    assert layer("echosynth.gen.data.phantom") == "data" and layer("echosynth.gen.core.config") == "foundation"
    assert layer("echosynth.gen.diffusion.loop") == "diffusion" and layer("echosynth.reports.build") == "reports"
    assert not allowed("echosynth.gen.diffusion.loop", "echosynth.classify.models") and allowed("echosynth.evaluate.fidelity", "echosynth.gen.diffusion.loop")
    assert not allowed("echosynth.reports.build", "echosynth.gen.diffusion.loop") and allowed("echosynth.reports.build", "echosynth.gen.core.io")
    assert layer("echosynth.gen.train") == "diffusion" and layer("echosynth.cli") == "command"
    assert not allowed("echosynth.pipelines.study", "echosynth.cli")
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_imports_follow_the_layers():
    graph = import_graph()
    bad = sorted((src, dst) for src, dsts in graph.items() for dst in dsts if not allowed(src, dst))
    unexpected = [f"{src} imports {dst} ({layer(src)} may not import {layer(dst)})"
                  for src, dst in bad if (src, dst) not in KNOWN_EXCEPTIONS]
    assert not unexpected, "imports against the layer order:\n" + "\n".join(unexpected)
    fixed = [f"{src} -> {dst}" for src, dst in KNOWN_EXCEPTIONS if (src, dst) not in bad]
    assert not fixed, "no longer imported, delete from KNOWN_EXCEPTIONS: " + ", ".join(fixed)


def test_no_import_cycles_at_module_level():
    found = cycles(import_graph(module_level_only=True))
    assert not found, "module-level import cycles: " + "; ".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycles_at_all(package):
    """Within these packages not even function-local imports go round in a circle."""
    inside = f"echosynth.{package}"
    graph = {m: {t for t in ts if t.split(".")[:2] == inside.split(".")}
             for m, ts in import_graph().items() if m.split(".")[:2] == inside.split(".")}
    found = cycles(graph)
    assert not found, "import cycles (function-local imports included): " + "; ".join(" <-> ".join(c) for c in found)


def _heavy(name: str) -> str | None:
    """The HEAVY package a third-party import name loads ("torch" for the TORCH family), or None."""
    hit = next((h for h in HEAVY if name == h or name.startswith(h + ".")), None)
    return "torch" if hit in TORCH else hit


def _parents(module: str) -> list[str]:
    """The module and its packages (importing a.b.c runs a, a.b and a.b.c)."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def module_level_loads() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module -> the HEAVY packages importing it loads, module -> the repository modules importing it runs).

    Both follow module-level imports only, through repository modules and their packages, transitively.
    """
    known = modules()
    runs, loads = {}, {}
    for name, path in known.items():
        nodes = list(_module_level(ast.parse(path.read_text(), str(path)).body))
        third = [a.name for n in nodes if isinstance(n, ast.Import) for a in n.names] + [
            n.module for n in nodes if isinstance(n, ast.ImportFrom) and not n.level and n.module]
        loads[name] = {h for h in map(_heavy, third) if h}
        targets = [t for n in nodes for t in _targets(n, name, path.name == "__init__.py", known)]
        runs[name] = {p for t in [*targets, name] for p in _parents(t) if p in known}
    changed = True
    while changed:  # transitive closure (a fixed point, so cycles through packages are harmless)
        changed = False
        for name in known:
            more = set().union(*(runs[d] for d in runs[name]))
            heavier = set().union(*(loads[d] for d in runs[name]))
            if not more <= runs[name] or not heavier <= loads[name]:
                runs[name] |= more
                loads[name] |= heavier
                changed = True
    return loads, runs


def _is_script(tree: ast.Module) -> bool:
    return any(isinstance(n, ast.If) and ast.unparse(n.test).replace("'", '"') == '__name__ == "__main__"'
               for n in tree.body)


def local_import_problems() -> tuple[list[str], set[tuple[str, str]]]:
    """(file:line: why, for each function-local import of a repository module the rule does not allow; the (src, dst) pairs).

    Allowed only when it defers time a script would spend before parsing: the importing module runs
    before a script parses (it is a script, or a script imports it at module level), it does not load
    torch at module level itself, and the imported module loads a HEAVY package that it does not.
    """
    known = modules()
    loads, runs = module_level_loads()
    trees = {name: ast.parse(path.read_text(), str(path)) for name, path in known.items()}
    before_parsing = set().union(*(runs[m] for m, tree in trees.items() if _is_script(tree)))
    problems, pairs = [], set()
    for src, tree in trees.items():
        path = known[src]
        local = {n for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
        for node in sorted(local, key=lambda n: n.lineno):
            for dst in dict.fromkeys(_targets(node, src, path.name == "__init__.py", known)):
                if "torch" in loads[src]:
                    why = f"{src} loads torch at module level already"
                elif src not in before_parsing:
                    why = f"{src} is no script and no script imports it at module level, so deferring saves no --help time"
                elif not loads[dst] - loads[src]:
                    why = (f"{dst} loads no heavy package that {src} does not "
                           f"({', '.join(sorted(loads[dst])) or 'none'})")
                else:
                    continue
                pairs.add((src, dst))
                if (src, dst) not in LOCAL_IMPORT_EXCEPTIONS:
                    problems.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)}: {why}; import it at the top")
    return problems, pairs


def test_module_level_loads():
    """The reader finds torch behind repository imports, and which modules run before a script parses."""
    loads, runs = module_level_loads()
    assert "torch" in loads["echosynth.gen.diffusion.loop"] and "torch" in loads["echosynth.evaluate.scoring"]  # directly; via echosynth.gen.diffusion.synthesis
    assert "pandas" in loads["echosynth.gen.data.manifest"] and "torch" not in loads["echosynth.gen.data.manifest"]
    assert loads["echosynth.gen.core.config"] == set() and loads["echosynth.gen.train"] == set()
    assert {"echosynth.gen", "echosynth.gen.core.config", "echosynth.gen.diffusion.settings", "echosynth.gen.core.io"} <= runs["echosynth.gen.train"]
    assert "echosynth.gen.diffusion.loop" not in runs["echosynth.gen.train"]  # imported after parsing
    assert _heavy("safetensors.torch") == "torch" and _heavy("safetensors") is None
    assert _heavy("matplotlib.pyplot") == "matplotlib" and _heavy("scipyx") is None


def test_local_imports_defer_heavy_modules():
    """A function-local import of a repository module only lets a script answer --help without torch & co."""
    problems, pairs = local_import_problems()
    assert not problems, "function-local imports with no latency reason:\n" + "\n".join(problems)
    stale = [f"{src} -> {dst}" for src, dst in LOCAL_IMPORT_EXCEPTIONS if (src, dst) not in pairs]
    assert not stale, "no longer needed, delete from LOCAL_IMPORT_EXCEPTIONS: " + ", ".join(stale)


def test_every_import_names_the_echosynth_package():
    """No `import gen...` or `from evaluate import ...`: the bare folder names are not installed (and
    `evaluate` is Hugging Face's)."""
    bare = []
    for path in modules().values():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and not node.level and node.module else [])
            bare += [f"{path.relative_to(REPO)}:{node.lineno}: {n}" for n in names if n.split(".")[0] in PACKAGES]
    assert not bare, "imports of the bare folder names (write echosynth.<package>):\n" + "\n".join(bare)
