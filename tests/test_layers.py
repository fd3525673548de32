"""The package's layers import only downward, read from the source's import statements (nothing is imported here).

core (the model, data, training, diagnostics, interventions, probes, loading) < evaluation < hub, inspection < paper;
`python -m sink_models` (__main__) is an entry point above them all.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sink_models"
UPPER = ("evaluation", "hub", "inspection", "paper")
# What each layer may import of the upper ones; the core (any other module) none of them.
ALLOWED = {"evaluation": set(), "hub": {"evaluation"}, "inspection": {"evaluation"}, "paper": set(UPPER)}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """The sink_models modules (or packages) `path` imports, relative imports resolved."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            found.add(stem)
            found |= {f"{stem}.{alias.name}" for alias in node.names}  # `from . import hub` imports a module
    return {name for name in found if name.split(".")[0] == "sink_models"}


def layer(module: str) -> str:
    """The layer a module belongs to: its upper-layer package, or 'core'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in UPPER else "core"


def edges() -> list[tuple[str, str]]:
    return [
        (module_name(path), target)
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "__main__.py"
        for target in sorted(imported(path))
    ]


def test_the_reader_sees_the_graph():
    """The parser finds known edges of each kind (relative, absolute-within-package, `from . import`), so an empty
    list of violations below means something."""
    found = set(edges())
    assert ("sink_models.hub.publish", "sink_models.evaluation.cards") in found
    assert ("sink_models.evaluation.evaluate", "sink_models.loading") in found
    assert ("sink_models.paper.synthetic", "sink_models.training") in found
    assert layer("sink_models.paper.synthetic") == "paper" and layer("sink_models.probes.dense") == "core"


@pytest.mark.parametrize("upper", ("core", *UPPER))
def test_each_layer_imports_only_downward(upper):
    allowed = ALLOWED.get(upper, set())
    upward = [
        (source, target)
        for source, target in edges()
        if layer(source) == upper
        and layer(target) != upper
        and layer(target) != "core"
        and layer(target) not in allowed
    ]
    assert upward == []


def test_the_remote_code_files_import_nothing_else_of_the_package():
    """The two files a Hub repo ships must run without the rest of sink_models."""
    shipped = ("sink_models.configuration_sink_vit", "sink_models.modeling_sink_vit")
    for name in shipped:
        targets = imported(PACKAGE / f"{name.split('.')[1]}.py")
        assert all(target.startswith(shipped) for target in targets), targets


def test_the_leaderboard_module_stands_alone():
    """The leaderboard Space runs a copy of hub/leaderboard.py without the package: it imports nothing of it."""
    assert imported(PACKAGE / "hub" / "leaderboard.py") == set()


def test_the_names_the_readme_documented_before_the_moves_still_import():
    """Moved modules keep their documented public names where they were (re-exports, the same objects)."""
    from sink_models import segmentation
    from sink_models.evaluation import cards
    from sink_models.hub import ZOO_VERSION
    from sink_models.probes import dense

    assert (segmentation.DenseOptions, segmentation.dense_probe) == (dense.DenseOptions, dense.dense_probe)
    assert ZOO_VERSION == cards.ZOO_VERSION
