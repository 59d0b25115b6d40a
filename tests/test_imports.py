"""The one-way house: method files -> common.py -> data/, never back; tools/ and the tiny base's builder stand on
common.py, which imports neither. Read from the source with `ast` (imports inside functions count too)."""
import ast
import glob
import os

from common import ROOT

# modules that read inputs (manifests, media, encoders, the LLM, converters, the generator, scoring, files, the
# tiny base's place): nothing of common.py or above, at any depth
INPUTS = {"data.files", "data.load", "data.convert", "data.generate", "data.acl", "data.score", "data.base",
          "data.real_weights"}


def modules(root=ROOT):
    """{module name: file} for the project's code (not tests/)."""
    files = [f for d in ("", "data", "tools") for f in glob.glob(os.path.join(root, d, "*.py"))]
    return {os.path.relpath(f, root)[:-3].replace(os.sep, "."): f for f in files if not f.endswith("__init__.py")}


def import_graph(root=ROOT):
    """{module: set of project modules it imports}, `from data import tiny` and `import data.tiny as t` alike."""
    mods = modules(root)
    graph = {}
    for name, path in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                deps |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def reach(graph, start):
    seen, todo = set(), [start]
    while todo:
        for d in graph[todo.pop()] - seen:
            seen.add(d)
            todo.append(d)
    return seen


def test_no_import_cycle_at_any_depth():
    graph = import_graph()
    cycles = sorted(m for m in graph if m in reach(graph, m))
    assert not cycles, f"modules on an import cycle: {cycles}"


def test_common_stands_on_data_only():
    graph = import_graph()
    below = reach(graph, "common")
    assert below and all(m.startswith("data.") for m in below), below
    assert "data.tiny" not in below, "the base's builder trains through common.py: it must sit above it"
    assert not [m for m in below if "common" in reach(graph, m)]


def test_input_modules_import_nothing_of_common_or_above():
    graph = import_graph()
    for m in INPUTS & set(graph):
        assert not {d for d in reach(graph, m) if not d.startswith("data.") or d == "data.tiny"}, m
    assert {"data.files", "data.load", "data.convert", "data.generate", "data.score", "data.base"} <= set(graph)


def test_the_walker_sees_every_import_form(tmp_path):
    """A cycle closed by any import form, at any depth, inside a function too, is found."""
    (tmp_path / "data").mkdir()
    (tmp_path / "tools").mkdir()
    for form in ("from data import c", "import data.c", "from data.c import x", "def f():\n    import data.c as c"):
        (tmp_path / "a.py").write_text("import data.b\n")
        (tmp_path / "data" / "b.py").write_text(form + "\n")
        (tmp_path / "data" / "c.py").write_text("from a import y\n")
        graph = import_graph(str(tmp_path))
        assert "data.c" in graph["data.b"] and "a" in reach(graph, "a"), form
    (tmp_path / "data" / "c.py").write_text("import os\n")
    assert "a" not in reach(import_graph(str(tmp_path)), "a")


def test_common_py_stays_small():
    assert sum(1 for _ in open(os.path.join(ROOT, "common.py"))) <= 1000
