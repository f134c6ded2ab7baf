"""Layering rules of the code base, checked by reading the source (no module is imported).

Every ``*.py`` under ``ml4paleo/`` and ``webapp/`` is parsed with :mod:`ast`; every
rule lists all its violations as ``path:line: why`` so one run shows everything.

Rules
-----
(a) ``ml4paleo`` never imports the web stack: no ``flask``, ``werkzeug``, ``waitress`` or
    ``webapp`` import (module level or inside a function, or a literal
    ``importlib.import_module("...")``).
(b) No import cycle between ``ml4paleo`` modules. The graph has an edge from a module to
    every module it imports, at module level or inside a function (imports under
    ``if TYPE_CHECKING:`` do not run and are left out). ``from P import name`` is an edge
    to ``P.name`` when that is a module, else to ``P``. Importing ``a.b.c`` also runs the
    ``__init__`` of ``a`` and ``a.b``, so those are edges too -- except packages that
    contain the importing module: they are being imported already when it runs, so a
    module's imports of its own package (``from . import x``, re-exports of the
    package's ``__init__``) add no edge to that ``__init__``. An ``__init__`` importing
    its own submodules is an ordinary edge.
(c) No private name of ours imported from another module: ``from m import _x`` is
    refused (dunder names excepted), and so is any import through a private module
    (``m._impl``) from outside the package that holds it. A private module may be
    imported from inside its own package (``from ._base import Volume`` in
    ``ml4paleo/io/``). Only ``ml4paleo`` / ``webapp`` modules are checked as the source:
    this is our layering rule (third-party internals are a separate, reviewed choice).
(d) Job file names are written only in ``ml4paleo/workspace/``: no string literal that is
    (or ends a path with, or starts a path with) ``image.ome.zarr``, ``labels.ome.zarr``,
    ``job.json``, ``meta.json``, ``segmentation.json`` or ``classes.json`` elsewhere
    (docstrings are documentation and are skipped; tests are not checked). The names
    inside a *format's* folder belong to that format and are written once in its module
    (``meta.json`` of a model folder, ``classes.json`` of a label store): the workspace
    takes them from there.
(e) ``os.replace`` only in ``ml4paleo/_fs.py`` (every atomic write goes through it).
(f) Status names are listed only in ``ml4paleo/jobs/statuses.py``: no Python list, tuple,
    set or dict literal naming two or more job statuses elsewhere, and no JavaScript
    array or object literal doing so in ``webapp/static/*.js`` (the scripts read the
    status table from ``GET /api/statuses``).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ml4paleo", "webapp")
WEB_STACK = ("flask", "werkzeug", "waitress", "webapp")
JOB_FILE_NAMES = ("image.ome.zarr", "labels.ome.zarr", "job.json", "meta.json",
                  "segmentation.json", "classes.json")
#: job statuses (generic words such as "error", "done", "pending" left out: they appear in
#: unrelated lists)
STATUS_NAMES = frozenset({
    "uploading", "uploaded", "converting", "converted", "convert_error", "annotated",
    "training_queued", "training", "trained", "segmenting", "segmented", "segment_error",
    "meshing_queued", "meshing", "meshed", "mesh_error", "measuring_queued", "measuring",
    "measured", "measure_error",
})
STATUS_HOME = "ml4paleo/jobs/statuses.py"
FS_HOME = "ml4paleo/_fs.py"
WORKSPACE = "ml4paleo/workspace/"
#: file names owned by a format: written once, in the module of that format
FORMAT_NAME_HOMES = {
    "meta.json": "ml4paleo/segmentation/model.py",
    "classes.json": "ml4paleo/segmentation/labels.py",
}


# ----------------------------------------------------------------------------- parsing
@dataclass
class Import:
    """One import statement, resolved to absolute module names."""

    line: int
    module: str  # the module named after ``from`` / ``import``
    names: tuple[str, ...] = ()  # names of ``from module import a, b``
    type_checking: bool = False


@dataclass
class Module:
    name: str
    path: Path
    rel: str
    is_package: bool
    tree: ast.Module
    imports: list[Import] = field(default_factory=list)

    @property
    def package(self) -> str:
        """The package this module's relative imports start from."""
        return self.name if self.is_package else self.name.rpartition(".")[0]


def _module_name(rel: Path) -> tuple[str, bool]:
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def _resolve(module: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.package.split(".")
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else (
                test.attr if isinstance(test, ast.Attribute) else None)
            if name == "TYPE_CHECKING":
                for child in node.body:
                    for sub in ast.walk(child):
                        if hasattr(sub, "lineno"):
                            lines.add(sub.lineno)
    return lines


def _load() -> dict[str, Module]:
    modules: dict[str, Module] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "node_modules" in path.parts:
                continue
            rel = path.relative_to(ROOT)
            name, is_package = _module_name(rel)
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(rel))
            mod = Module(name, path, rel.as_posix(), is_package, tree)
            guarded = _type_checking_lines(tree)
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    for alias in node.names:
                        mod.imports.append(Import(node.lineno, alias.name,
                                                  type_checking=node.lineno in guarded))
                elif isinstance(node, ast.ImportFrom):
                    mod.imports.append(Import(
                        node.lineno, _resolve(mod, node), tuple(a.name for a in node.names),
                        type_checking=node.lineno in guarded))
            modules[name] = mod
    return modules


MODULES = _load()


def _docstring_nodes(tree: ast.Module) -> set[int]:
    """ids of the Constant nodes that are docstrings."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                out.add(id(body[0].value))
    return out


def _strings(mod: Module) -> Iterator[tuple[int, str]]:
    """Every string constant of a module (f-string pieces included), docstrings skipped."""
    skip = _docstring_nodes(mod.tree)
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            yield node.lineno, node.value


def _ours(name: str) -> bool:
    return name.split(".")[0] in PACKAGES


# ----------------------------------------------------------------------------- rule (a)
def web_stack_imports() -> list[str]:
    bad = []
    for mod in MODULES.values():
        if not mod.name.startswith("ml4paleo"):
            continue
        for imp in mod.imports:
            targets = [imp.module] if imp.module else []
            if any(t.split(".")[0] in WEB_STACK for t in targets):
                bad.append(f"{mod.rel}:{imp.line}: imports {imp.module}")
        for node in ast.walk(mod.tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "import_module" and node.args
                    and isinstance(node.args[0], ast.Constant)
                    and str(node.args[0].value).split(".")[0] in WEB_STACK):
                bad.append(f"{mod.rel}:{node.lineno}: imports {node.args[0].value} dynamically")
    return bad


# ----------------------------------------------------------------------------- rule (b)
def _targets(mod: Module, imp: Import) -> set[str]:
    """Our modules this import runs (see the module docstring for the rule)."""
    named = [imp.module]
    for n in imp.names:
        if f"{imp.module}.{n}" in MODULES:
            named.append(f"{imp.module}.{n}")
    own = set()  # packages holding the importing module
    parts = mod.name.split(".")
    for i in range(1, len(parts) + (1 if mod.is_package else 0)):
        own.add(".".join(parts[:i]))
    out: set[str] = set()
    for target in named:
        if not _ours(target):
            continue
        pieces = target.split(".")
        for i in range(1, len(pieces) + 1):
            candidate = ".".join(pieces[:i])
            if candidate in MODULES and candidate not in own and candidate != mod.name:
                out.add(candidate)
    return out


def import_graph(prefix: str = "ml4paleo") -> dict[str, dict[str, int]]:
    """``{module: {imported module: line}}`` over our modules under ``prefix``."""
    graph: dict[str, dict[str, int]] = {}
    for mod in MODULES.values():
        if not mod.name.startswith(prefix):
            continue
        edges = graph.setdefault(mod.name, {})
        for imp in mod.imports:
            if imp.type_checking:
                continue
            for target in _targets(mod, imp):
                if target.startswith(prefix):
                    edges.setdefault(target, imp.line)
    return graph


def import_cycles(prefix: str = "ml4paleo") -> list[str]:
    """Each strongly connected set of modules (Tarjan), as one readable line."""
    graph = import_graph(prefix)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, {}):
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    lines = []
    for component in found:
        members = set(component)
        edges = [f"{MODULES[a].rel}:{line} -> {b}"
                 for a in component for b, line in sorted(graph[a].items()) if b in members]
        lines.append("cycle among " + ", ".join(component) + " (" + "; ".join(edges) + ")")
    return lines


# ----------------------------------------------------------------------------- rule (c)
def _private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def private_imports() -> list[str]:
    bad = []
    for mod in MODULES.values():
        for imp in mod.imports:
            if not _ours(imp.module):
                continue
            pieces = imp.module.split(".")
            # a private module on the way: only from inside the package that holds it
            for i, part in enumerate(pieces):
                if _private(part):
                    holder = ".".join(pieces[:i])
                    if not (mod.package == holder or mod.package.startswith(holder + ".")):
                        bad.append(f"{mod.rel}:{imp.line}: imports private module "
                                   f"{'.'.join(pieces[:i + 1])} from outside {holder or 'it'}")
                    break
            for name in imp.names:
                if not _private(name):
                    continue
                if f"{imp.module}.{name}" in MODULES and (
                        mod.package == imp.module or mod.package.startswith(imp.module + ".")):
                    continue  # ``from . import _base`` / ``from ml4paleo import _fs`` inside the package
                bad.append(f"{mod.rel}:{imp.line}: imports private name {name} from {imp.module}")
    return bad


# ----------------------------------------------------------------------------- rule (d)
def _names_job_file(text: str) -> str | None:
    stripped = text.strip()
    for name in JOB_FILE_NAMES:
        if stripped == name:
            return name
        # a path naming the file: "/job.json" (an f-string piece), "jobs/x/job.json"
        if re.search(rf"(^|[/\\]){re.escape(name)}($|[/\\])", stripped) and re.search(
                r"[/\\]", stripped):
            return name
    return None


def job_file_literals() -> list[str]:
    bad = []
    for mod in MODULES.values():
        for line, text in _strings(mod):
            name = _names_job_file(text)
            if not name:
                continue
            home = FORMAT_NAME_HOMES.get(name)
            if home is not None:
                if mod.rel != home:
                    bad.append(f"{mod.rel}:{line}: file name {name!r} belongs to {home}")
            elif not mod.rel.startswith(WORKSPACE):
                bad.append(f"{mod.rel}:{line}: job file name {name!r} (use JobPaths)")
    return bad


# ----------------------------------------------------------------------------- rule (e)
def os_replace_calls() -> list[str]:
    bad = []
    for mod in MODULES.values():
        if mod.rel == FS_HOME:
            continue
        for node in ast.walk(mod.tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "replace" and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "os"):
                bad.append(f"{mod.rel}:{node.lineno}: os.replace (use ml4paleo._fs)")
        for imp in mod.imports:
            if imp.module == "os" and "replace" in imp.names:
                bad.append(f"{mod.rel}:{imp.line}: imports os.replace (use ml4paleo._fs)")
    return bad


# ----------------------------------------------------------------------------- rule (f)
def _status_count(values: list[ast.expr]) -> int:
    return len({v.value for v in values
                if isinstance(v, ast.Constant) and v.value in STATUS_NAMES})


def python_status_lists() -> list[str]:
    bad = []
    for mod in MODULES.values():
        if mod.rel == STATUS_HOME:
            continue
        for node in ast.walk(mod.tree):
            if isinstance(node, ast.List | ast.Tuple | ast.Set):
                values = node.elts
            elif isinstance(node, ast.Dict):
                values = [k for k in node.keys if k is not None]
            else:
                continue
            if _status_count(values) >= 2:
                bad.append(f"{mod.rel}:{node.lineno}: a literal lists job statuses "
                           "(use ml4paleo.jobs.statuses)")
    return bad


_JS_GROUP = re.compile(r"\[[^\[\]]*\]|\{[^{}]*\}", re.S)
_JS_NAME = re.compile(r"""["'`]([a-z_]+)["'`]|\b([a-z_]+)\s*:""")


def js_status_lists() -> list[str]:
    bad = []
    for path in sorted((ROOT / "webapp" / "static").glob("*.js")):
        text = path.read_text(encoding="utf-8")
        for match in _JS_GROUP.finditer(text):
            names = {a or b for a, b in _JS_NAME.findall(match.group(0))} & STATUS_NAMES
            if len(names) >= 2:
                line = text.count("\n", 0, match.start()) + 1
                bad.append(f"{path.relative_to(ROOT).as_posix()}:{line}: lists job statuses "
                           f"{sorted(names)} (read them from /api/statuses)")
    return bad


# ----------------------------------------------------------------------------- the tests
RULES = {
    "a: ml4paleo imports the web stack": web_stack_imports,
    "b: import cycle": import_cycles,
    "c: private name imported across modules": private_imports,
    "d: job file name outside ml4paleo.workspace": job_file_literals,
    "e: os.replace outside ml4paleo._fs": os_replace_calls,
    "f: status list outside ml4paleo.jobs.statuses (Python)": python_status_lists,
    "f: status list in webapp/static (JavaScript)": js_status_lists,
}


@pytest.mark.parametrize("rule", list(RULES))
def test_rule(rule):
    violations = RULES[rule]()
    assert not violations, f"{rule}:\n" + "\n".join(violations)


# --------------------------------------------------------------- the checks catch things
def _module(rel: str, source: str) -> Module:
    name, is_package = _module_name(Path(rel))
    tree = ast.parse(source)
    mod = Module(name, ROOT / rel, rel, is_package, tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            mod.imports.append(Import(node.lineno, _resolve(mod, node),
                                      tuple(a.name for a in node.names)))
        elif isinstance(node, ast.Import):
            mod.imports.extend(Import(node.lineno, a.name) for a in node.names)
    return mod


@pytest.fixture
def planted(monkeypatch):
    """Add made-up modules to the parsed tree for one test."""
    added: list[str] = []

    def plant(rel: str, source: str) -> Module:
        mod = _module(rel, source)
        monkeypatch.setitem(MODULES, mod.name, mod)
        added.append(mod.name)
        return mod

    return plant


def test_rules_find_planted_violations(planted):
    planted("ml4paleo/zz_a.py", "def f():\n    from ml4paleo import zz_b\n")
    planted("ml4paleo/zz_b.py", "from ml4paleo.zz_a import f\n"
                                "from ml4paleo.io._any import open_any\n"
                                "from ml4paleo.io import _plan\n"
                                "import os\nos.replace('a', 'b')\n"
                                "x = ('meshing', 'meshed')\n"
                                "p = root / 'labels.ome.zarr'\n"
                                "q = f'{root}/job.json'\n"
                                "msg = 'needs meta.json and forest.npz'\n")
    planted("ml4paleo/zz_c.py", "import importlib\nimportlib.import_module('webapp.x')\n"
                                "def g():\n    import flask\n")
    assert any("zz_a" in c and "zz_b" in c for c in import_cycles())
    private = private_imports()
    assert any("zz_b.py:2" in v and "ml4paleo.io._any" in v for v in private)
    assert any("zz_b.py:3" in v and "_plan" in v for v in private)
    assert [v.split(":")[1] for v in os_replace_calls() if "zz_b" in v] == ["5"]
    assert [v.split(":")[1] for v in python_status_lists() if "zz_b" in v] == ["6"]
    assert [v.split(":")[1] for v in job_file_literals() if "zz_b" in v] == ["7", "8"]
    assert sorted(v.split(":")[1] for v in web_stack_imports() if "zz_c" in v) == ["2", "4"]


def test_own_package_imports_are_not_cycles(planted):
    # a package __init__ re-exporting its submodule, which imports a sibling through the
    # package: the usual layout, not a cycle
    planted("ml4paleo/zzpkg/__init__.py", "from ml4paleo.zzpkg.one import f\n")
    planted("ml4paleo/zzpkg/one.py", "from . import two\nfrom ._three import g\n")
    planted("ml4paleo/zzpkg/two.py", "x = 1\n")
    planted("ml4paleo/zzpkg/_three.py", "def g():\n    pass\n")
    assert not [c for c in import_cycles() if "zzpkg" in c]
    assert not [v for v in private_imports() if "zzpkg" in v]
    graph = import_graph()
    assert set(graph["ml4paleo.zzpkg"]) == {"ml4paleo.zzpkg.one"}
    assert set(graph["ml4paleo.zzpkg.one"]) == {"ml4paleo.zzpkg.two", "ml4paleo.zzpkg._three"}


def test_js_status_lists_are_found(tmp_path, monkeypatch):
    text = 'const A = ["training", "meshing"];\nconst B = { meshed: 1, trained: 2 };\n' \
           'if (s === "meshing") go();\n'
    names = [{a or b for a, b in _JS_NAME.findall(m.group(0))} & STATUS_NAMES
             for m in _JS_GROUP.finditer(text)]
    assert names == [{"training", "meshing"}, {"meshed", "trained"}]
