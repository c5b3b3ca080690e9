"""The package's import graph: data flows one way, cli -> grid -> drivers -> trial -> model -> data.

LAYERS lists the modules from the top down; a module may import only modules of the layers below
its own (imports inside functions count too). A new module must be placed here to pass."""
from __future__ import annotations

import ast
from pathlib import Path

import alexnet_tiny

PACKAGE = Path(alexnet_tiny.__file__).parent

LAYERS = [
    ["__main__"],
    ["cli"],
    ["report", "predict"],   # read what training wrote (and a checkpoint); import no driver
    ["page"],                # the report's page (index.html) and its list of figures
    ["findings"],            # what a grid taught: effects, intervals, paired ties, conclusions
    ["published"],           # the original study's published table, beside ours
    ["figures"],
    ["grid"],                # presets, expansion, scheduling, resume
    ["estimate"],            # a grid's duration, from real steps of the drivers' loop
    ["ray_backend"],         # a driver on a cluster: runs train.run_trials in each worker
    ["train"],               # a driver: one trial (and the entry point that picks the engine)
    ["engine"],              # a driver: a stack of trials
    ["trial"],               # what a trial is: data stream, lr, loss, SGD step, momenta format
    ["runfolder"],           # one run folder's lifecycle and the checkpoint format
    ["results"],             # best trial, results tables, formatting
    ["explain"],             # what a checkpoint learned: kernels, FC2 features, neighbours, Grad-CAM
    ["evaluate"],            # evaluation, saved checkpoints evaluated
    ["start"],               # a trial's starting weights (init whiten: from the training split)
    ["checkpoint"],
    ["runlog"],              # run folder file names and TensorBoard tags
    ["model", "transforms"],
    ["asha", "config"],      # asha: the early-stopping rule (Ray Tune's ASHAScheduler, written out)
    ["device"],
    ["data"],
    ["files"],               # folder locks and atomic writes
    ["allocator", "progress", "errors", "stats"],  # stats: Wilson intervals, exact McNemar, Spearman
    ["__init__"],            # the public API: re-exports only (imported by everything, imports from below)
]
RANK = {m: i for i, layer in enumerate(LAYERS) for m in layer}


def package_imports(path: Path) -> set[str]:
    """The alexnet_tiny modules a file imports (relative or absolute, at any depth)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 or (node.module or "").startswith("alexnet_tiny"):
                base = (node.module or "").removeprefix("alexnet_tiny").lstrip(".")
                if base:
                    found.add(base.split(".")[0])
                else:  # from . import runlog, figures; a name that is no module comes from __init__
                    found.update(alias.name if (PACKAGE / f"{alias.name}.py").exists() else "__init__"
                                 for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("alexnet_tiny."))
    return found


def test_every_module_has_a_layer():
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    assert modules == set(RANK), f"place in LAYERS: {sorted(modules - set(RANK))}; gone: {sorted(set(RANK) - modules)}"


def test_no_module_imports_its_own_layer_or_one_above():
    upward = []
    for path in sorted(PACKAGE.glob("*.py")):
        if path.stem == "__init__":
            continue  # checked below
        for target in package_imports(path):
            if RANK[target] <= RANK[path.stem]:
                upward.append(f"{path.stem} imports {target}")
    assert not upward, upward


def test_the_public_api_only_reexports():
    imported = package_imports(PACKAGE / "__init__.py")
    assert imported and "cli" not in imported and "grid" not in imported


def test_the_checker_sees_upward_and_circular_imports(tmp_path):
    """The checker itself bites: a file importing upward is reported."""
    bad = tmp_path / "data.py"
    bad.write_text("from .engine import train_stack\nimport alexnet_tiny.grid\n\ndef f():\n    from . import cli\n")
    assert package_imports(bad) == {"engine", "grid", "cli"}
