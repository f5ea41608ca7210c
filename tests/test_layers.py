"""The package's import graph keeps its layers: nothing imports a layer above it or a sibling of its
own layer, no module imports itself back through others (no cycle), and deepspeed is imported only in distributed/.

Every import statement of every module is read (those inside functions too), so a lazy import
cannot hide a dependency. The layers, bottom to top, are LAYERS below (docs/architecture.md, "Layout").
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "loretta_ds"

LAYERS = [
    {"loretta_ds", "settings", "file_io", "lazy_names", "host_memory"},  # helpers every layer uses; the package root's constants
    {"run", "run.directory", "run.reporting", "run.failure"},  # the run directory's names and run_config.json;
    # --report_to; the failure that ends a run
    {"run.lock", "run.metrics"},  # one run per directory; what a run reports
    {"tt", "quantization", "frozen_linear"},  # tensor-train maths; the 4-bit base's settings and byte counts;
    # the frozen bf16 layers' input gradient on CPUs without native bf16 (siblings)
    {"adapters"},  # LorettaConfig, the layers, inject / merge / save / load
    {"data", "distributed", "export", "integrations"},  # siblings: none imports another
    {"tiny_llama", "run.contents", "generation", "loss"},  # run.contents reads checkpoints' and exports' own files
    {"models", "run_config", "evaluate"},
    {"estimate", "traffic"},  # the memory plan and the step's traffic, from a meta-device model
    {"layout"},  # --ds_config auto: the DeepSpeed layout, chosen from the memory plan
    {"train_plan"},
    {"trainer"},
    {"commands", "cli"},
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


# Packages whose modules sit in different layers: their unit is the module, not the package.
SPLIT_PACKAGES = {"run"}


def unit_of(module: str) -> str:
    """The layer unit of a dotted module name: its first component below loretta_ds (the first two
    in a package of SPLIT_PACKAGES)."""
    parts = module.split(".")
    if len(parts) > 2 and parts[1] in SPLIT_PACKAGES:
        return ".".join(parts[1:3])
    return parts[1] if len(parts) > 1 else parts[0]


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")


def imports_of(path: Path, module: str | None = None) -> list[tuple[str, int]]:
    """(imported module, line) for every import in the file (``module`` is its dotted name, by
    default from its place in the package), relative ones made absolute."""
    module = module or module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            base = parts[:len(parts) - (node.level - 1)] if node.level else []
            found.append((".".join(base + ([node.module] if node.module else [])), node.lineno))
    return found


def package_modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_unit_has_a_layer():
    units = {unit_of(module_name(p)) for p in package_modules()}
    assert units <= set(RANK), f"modules without a layer (add them to LAYERS): {sorted(units - set(RANK))}"


def test_no_module_imports_upward_or_sideways():
    problems = []
    for path in package_modules():
        source = unit_of(module_name(path))
        for target, line in imports_of(path):
            if not target.startswith("loretta_ds"):
                continue
            unit = unit_of(target)
            if unit == source:
                continue
            if RANK[unit] >= RANK[source]:
                kind = "sideways" if RANK[unit] == RANK[source] else "upward"
                problems.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target} ({kind}: "
                                f"{source} is layer {RANK[source]}, {unit} layer {RANK[unit]})")
    assert not problems, "\n".join(problems)


def module_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (``from PACKAGE import MODULE`` names the module)."""
    names = {module_name(path): path for path in package_modules()}
    graph = {}
    for module, path in names.items():
        targets = set()
        tree = ast.parse(path.read_text())
        for (target, _), node in zip(imports_of(path), [n for n in ast.walk(tree)
                                                       if isinstance(n, (ast.Import, ast.ImportFrom))]):
            if not target.startswith("loretta_ds"):
                continue
            submodules = [f"{target}.{a.name}" for a in getattr(node, "names", []) if f"{target}.{a.name}" in names]
            targets.update(submodules or ([target] if target in names else []))
        graph[module] = targets - {module}
    return graph


def test_no_import_cycle():
    """No module imports one that imports it back, directly or through others (a package's
    __init__ re-exporting its modules is not a cycle: modules import their siblings directly)."""
    graph = {m: {t for t in ts if not (m.startswith(t + ".") and t in graph_packages())}
             for m, ts in module_graph().items()}
    state, cycles = {}, []

    def visit(module, trail):
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                cycles.append(" -> ".join(trail[trail.index(target):] + [target]))
            elif target not in state:
                visit(target, trail + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


def graph_packages() -> set[str]:
    return {module_name(path) for path in package_modules() if path.name == "__init__.py"}


def test_deepspeed_is_imported_only_in_distributed():
    problems = [f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}"
                for path in package_modules() for target, line in imports_of(path)
                if target.split(".")[0] == "deepspeed" and path.parent.name != "distributed"]
    assert not problems, "\n".join(problems)


def test_the_check_sees_lazy_imports(tmp_path):
    """An import inside a function counts: the walk would catch trainer importing deepspeed lazily."""
    module = tmp_path / "lazy.py"
    module.write_text("def f():\n    import deepspeed\n    from .trainer import Trainer\n")
    assert [t for t, _ in imports_of(module, "loretta_ds.export.lazy")] == ["deepspeed", "loretta_ds.export.trainer"]


def test_help_imports_no_heavy_library():
    """`loretta-ds [COMMAND] --help` answers without importing torch, deepspeed, transformers or
    datasets (the imports are where the work is), so help takes a fraction of a second."""
    import subprocess
    import sys

    probe = ("import sys\nfrom loretta_ds.cli import main\n"
             "for command in ([], ['train'], ['plan'], ['count'], ['estimate'], ['export'], ['generate']):\n"
             "    try:\n        main([*command, '--help'])\n    except SystemExit:\n        pass\n"
             "print(sorted(m for m in ('torch', 'deepspeed', 'transformers', 'datasets') if m in sys.modules),"
             " file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          cwd=PACKAGE.parent)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "[]", done.stderr
    assert "usage: loretta-ds train" in done.stdout and "--tt_shapes" in done.stdout


def test_the_documented_layout_names_every_module():
    """docs/architecture.md's Layout block lists every module and package of loretta_ds (the tree,
    not a memory of it)."""
    readme = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    layout = readme.split("## Layout", 1)[1].split("```", 2)[1]
    listed = set(re.findall(r"^loretta_ds/([a-z_]+)(?:\.py|/)", layout, re.M))
    present = {path.stem for path in PACKAGE.iterdir()
               if (path.suffix == ".py" and path.stem != "__init__")
               or (path.is_dir() and not path.name.startswith("__"))}
    assert present == listed, f"missing from docs/architecture.md's layout: {sorted(present - listed)}; " \
                              f"listed but absent: {sorted(listed - present)}"
