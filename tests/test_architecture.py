"""The package's imports flow one way: entry points → trainers and tools → data, tasks, checkpoints → the core.

Every `import` in `albert_jax/` is read from the source (those inside
functions too); an `if __name__ == "__main__":` block is entry-point code.
A module may import modules of its own layer or below, and no chain of
imports may come back to where it started.
"""

import ast
import pathlib

import pytest

from tests.conftest import REPO

CORE = ("model", "attention", "optim", "sharding", "tokenizer", "config_lib", "storage")
LAYERS = {  # top-level name under albert_jax -> layer; higher layers may import lower ones
  **{name: 0 for name in ("__init__", *CORE)},
  **{name: 1 for name in ("data", "tasks", "checkpoints")},
  **{name: 2 for name in ("trainers", "tools")},
  **{
    name: 3
    for name in ("cli", "train", "finetune", "prepare", "predict", "export", "convert", "summary", "compile_check")
  },
}


def _module_name(path: pathlib.Path, root: pathlib.Path) -> str:
  parts = path.relative_to(root.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_main_block(node: ast.AST) -> bool:
  test = getattr(node, "test", None)
  return (
    isinstance(node, ast.If)
    and isinstance(test, ast.Compare)
    and isinstance(test.left, ast.Name)
    and test.left.id == "__name__"
  )


def _imports(tree: ast.AST):
  """Every import node, outside `if __name__ == "__main__":` blocks."""
  for node in ast.iter_child_nodes(tree):
    if _is_main_block(node):
      continue
    if isinstance(node, (ast.Import, ast.ImportFrom)):
      yield node
    yield from _imports(node)


def import_graph(root: pathlib.Path) -> dict[str, set[str]]:
  """module -> the package's modules it imports (`from pkg import sub` counts as importing `pkg.sub`)."""
  package = root.name
  files = {_module_name(p, root): p for p in root.rglob("*.py")}
  graph = {}
  for module, path in files.items():
    targets = set()
    for node in _imports(ast.parse(path.read_text(), str(path))):
      if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
      elif node.module and node.level == 0:
        names = [
          f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in files else node.module
          for alias in node.names
        ]
      else:
        names = []
      targets.update(n for n in names if n.split(".")[0] == package and n in files and n != module)
    graph[module] = targets
  return graph


def layer(module: str) -> int:
  parts = module.split(".")
  return LAYERS[parts[1] if len(parts) > 1 else "__init__"]


def violations(graph: dict[str, set[str]]) -> list[str]:
  """Imports against the direction of the layers, and import cycles (each named by its modules)."""
  found = [
    f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
    for a, targets in sorted(graph.items())
    for b in sorted(targets)
    if layer(b) > layer(a)
  ]
  visiting, done = [], set()

  def visit(module):
    if module in visiting:
      found.append("cycle: " + " -> ".join(visiting[visiting.index(module) :] + [module]))
      return
    if module in done:
      return
    visiting.append(module)
    for target in sorted(graph[module]):
      visit(target)
    visiting.pop()
    done.add(module)

  for module in sorted(graph):
    visit(module)
  return found


def test_imports_flow_from_entry_points_to_the_core_without_cycles():
  graph = import_graph(REPO / "albert_jax")
  unknown = sorted(m for m in graph if (m.split(".") + ["__init__"])[1] not in LAYERS)
  assert not unknown, f"modules with no layer in LAYERS: {unknown}"
  assert violations(graph) == []
  assert not any(graph[f"albert_jax.{name}"] - {f"albert_jax.{c}" for c in CORE} for name in CORE)


def test_the_check_finds_a_cycle_and_an_upward_import(tmp_path):
  root = tmp_path / "albert_jax"
  (root / "data").mkdir(parents=True)
  (root / "__init__.py").write_text("")
  (root / "data" / "__init__.py").write_text("")
  (root / "model.py").write_text("from albert_jax.data import corpus\n")  # the core importing a subpackage
  (root / "data" / "corpus.py").write_text("def f():\n  from albert_jax.data import pipeline\n")
  (root / "data" / "pipeline.py").write_text("import albert_jax.data.corpus\n")
  (root / "train.py").write_text("if __name__ == '__main__':\n  import albert_jax.model\n")
  found = violations(import_graph(root))
  assert found == [
    "albert_jax.model (layer 0) imports albert_jax.data.corpus (layer 1)",
    "cycle: albert_jax.data.corpus -> albert_jax.data.pipeline -> albert_jax.data.corpus",
  ]


@pytest.mark.parametrize("trainer", ["pretraining", "finetuning"])
def test_each_trainer_builds_on_the_core_and_its_loop(trainer):
  graph = import_graph(REPO / "albert_jax")
  assert {"albert_jax.trainers.core", "albert_jax.trainers.loop"} <= graph[f"albert_jax.trainers.{trainer}"]
