"""The package's imports flow one way: base -> data/text -> models -> sampling -> pipeline ->
train/evaluate -> recipes -> cli/server.

Every module under src/dalle is read with `ast` (nothing is imported), and every `import dalle...`
and `from dalle... import ...` is collected, wherever it stands: at module level, inside a
function (the CLI's lazy imports), or under `if TYPE_CHECKING:`. Both checks use all of them.
A lazy import only postpones a dependency, it does not remove it: an upward import hidden in a
function breaks the layering as much as one at the top, and a circle closed by a lazy import is a
two-way dependency that merely avoids Python's partially-initialised-module error. No lazy import
today needs an exception, so the stricter reading costs nothing. Violations that exist and are
yet to be fixed are listed, with their reason, in KNOWN_VIOLATIONS.

Importing `dalle.a.b` runs `dalle/__init__.py` and `dalle/a/__init__.py` too; those implicit
parent imports are Python's machinery and not counted, or every package `__init__` that re-exports
its submodules would be a circle. `from dalle.train import distributed` counts as an import of the
submodule `dalle.train.distributed`; `from dalle.train import Trainer` as one of the package.
The package root `dalle` is the public facade (it re-exports the trainer), so it sits just below
the recipes: no library module may import it, the recipes, CLI and server may.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# Low to high. A module may import its own layer and the layers below it, never a higher one.
# A name covers the module and, when it is a package, everything inside it; the root `dalle`
# covers only its own `__init__`, so a new module must be placed here explicitly.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("dalle.errors", "dalle.config", "dalle.utils", "dalle.threads", "dalle.hub")),
    ("data and text", ("dalle.data", "dalle.text")),
    ("models", ("dalle.attention", "dalle.flex_attention", "dalle.pretrained", "dalle.vae", "dalle.prior",
                "dalle.clip", "dalle.openai_vae", "dalle.adapter")),
    ("sampling", ("dalle.sampling",)),
    ("pipeline", ("dalle.pipeline", "dalle.outputs")),
    ("train and evaluate", ("dalle.train", "dalle.evaluate")),
    ("package facade", ("dalle",)),
    ("recipes", ("dalle.card", "dalle.recipe", "dalle.recipes", "dalle.folder_recipe", "dalle.finetune")),
    ("cli and server", ("dalle.cli", "dalle.cli_training", "dalle.__main__", "dalle.serve")),
]

# (importer, imported): violations that exist today, each with the reason it is not fixed yet.
# The test fails when an entry is no longer true, so this list can only shrink.
KNOWN_VIOLATIONS: dict[tuple[str, str], str] = {}


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(src: Path | None = None) -> dict[str, Path]:
    """Every module under `src` (default: the repository's src/) by dotted name."""
    src = src or SRC
    return {module_name(p, src): p for p in sorted((src / "dalle").rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> dict[str, int]:
    """The `dalle` modules that module `name` (file `path`) imports, each with its first line."""
    is_package = path.name == "__init__.py"
    found: dict[str, int] = {}

    def add(target: str, line: int) -> None:
        if target == "dalle" or target.startswith("dalle."):
            found.setdefault(target, line)

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing module's package
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[:len(package) - (node.level - 1)]
                base = ".".join(package + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                add(submodule if submodule in known else base, node.lineno)
    found.pop(name, None)
    return found


def import_graph(src: Path | None = None) -> dict[str, dict[str, int]]:
    found = modules(src)
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def layer_of(module: str) -> int:
    """Index of the layer whose longest matching name covers `module`."""
    best, best_length = None, -1
    for index, (_, names) in enumerate(LAYERS):
        for prefix in names:
            covers = module == prefix or (prefix != "dalle" and module.startswith(prefix + "."))
            if covers and len(prefix) > best_length:
                best, best_length = index, len(prefix)
    assert best is not None, f"{module} is in no layer: add it to LAYERS in {__file__}"
    return best


def upward_imports(graph: dict[str, dict[str, int]]) -> list[tuple[str, str, int]]:
    return [(module, target, line)
            for module, targets in sorted(graph.items())
            for target, line in sorted(targets.items())
            if layer_of(target) > layer_of(module)]


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for root in sorted(graph):
        if root in state:
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            target = next(stack[-1], None)
            if target is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(target) == 1:
                return path[path.index(target):] + [target]
            elif target not in state and target in graph:
                state[target] = 1
                path.append(target)
                stack.append(iter(sorted(graph[target])))
    return None


def describe(violations: list[tuple[str, str, int]]) -> str:
    return "\n".join(f"  {m} (line {line}, layer '{LAYERS[layer_of(m)][0]}') imports {t} "
                     f"(layer '{LAYERS[layer_of(t)][0]}')" for m, t, line in violations)


def test_every_module_belongs_to_a_layer():
    for module in modules():
        layer_of(module)


def test_no_module_imports_a_higher_layer():
    violations = upward_imports(import_graph())
    unexpected = [v for v in violations if v[:2] not in KNOWN_VIOLATIONS]
    assert not unexpected, "imports from a lower layer to a higher one:\n" + describe(unexpected)
    fixed = set(KNOWN_VIOLATIONS) - {v[:2] for v in violations}
    assert not fixed, f"no longer violated, remove from KNOWN_VIOLATIONS: {sorted(fixed)}"


def test_there_is_no_import_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_only_the_entry_point_imports_the_cli():
    graph = import_graph()
    importers = sorted(m for m, targets in graph.items() if "dalle.cli" in targets)
    assert importers in ([], ["dalle.__main__"]), f"modules importing dalle.cli: {importers}"


def test_nothing_re_enters_the_command_line():
    """Recipes call the stage functions directly; nothing runs the Typer app as a library (the
    entry point parses and invokes its command itself), so no module names standalone_mode."""
    found = [f"{path.relative_to(SRC)}:{number}: {line.strip()}"
             for path in modules().values()
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if "standalone_mode" in line]
    assert not found, "standalone_mode in:\n" + "\n".join(found)


def test_the_checks_see_a_violation_and_a_circle(tmp_path):
    """The checks themselves can fail: a scratch package with an upward import and a circle."""
    files = {
        "dalle/__init__.py": "",
        "dalle/errors.py": "",
        "dalle/data/__init__.py": "",
        "dalle/data/folder.py": "def f():\n    from dalle.prior import Prior\n",
        "dalle/prior.py": "from dalle import sampling\n",
        "dalle/sampling.py": "from .prior import Prior\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph(tmp_path)
    assert graph["dalle.sampling"] == {"dalle.prior": 1}
    assert [v[:2] for v in upward_imports(graph)] == [("dalle.data.folder", "dalle.prior"),
                                                      ("dalle.prior", "dalle.sampling")]
    assert find_cycle(graph) in (["dalle.prior", "dalle.sampling", "dalle.prior"],
                                 ["dalle.sampling", "dalle.prior", "dalle.sampling"])
