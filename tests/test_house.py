"""House rules the layout relies on: light modules stay light, no import cycles, and no
library name that pytest could collect."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "animalcls"
LIGHT = ("inference", "app_state", "progress", "features", "hooks", "settings", "atomic", "app_views", "distribute",
         "batch_predict", "cli", "cli_checks", "cli_parser", "teach", "teach_cli", "teach_data", "teach_head", "teach_session", "manifest", "checkpoints",
         "app_checkpoints", "app_sessions", "onnx_engine")


def test_serving_and_progress_modules_import_neither_tensorflow_nor_keras():
    imports = "; ".join(f"import animalcls.{name}" for name in LIGHT)
    code = f"import sys; {imports}; print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PACKAGE.parent)
    assert out.stdout.strip() == "[]"


def _imports(path: Path) -> set[str]:
    """animalcls modules that `path` imports anywhere (deferred imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found.update([node.module] if node.module else [a.name for a in node.names])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("animalcls."):
            found.add(node.module.split(".")[1])
    return {name.split(".")[0] for name in found}


def test_no_import_cycles_inside_the_package():
    graph = {p.stem: _imports(p) & {q.stem for q in PACKAGE.glob("*.py")} for p in PACKAGE.glob("*.py")}
    graph.pop("__init__")
    for module in graph:
        graph[module].discard("__init__")

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    cycles = sorted(m for m in graph if reaches(m, m, set()))
    assert cycles == []


def test_no_library_function_is_named_like_a_test():
    names = [
        f"{path.stem}.{node.name}"
        for path in [*PACKAGE.glob("*.py"), PACKAGE.parent / "app.py", *PACKAGE.parent.glob("app_*.py")]
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name.lower().startswith("test")
    ]
    assert names == []


def test_no_module_is_much_over_400_lines():
    long = {p.name: n for p in [*PACKAGE.glob("*.py"), PACKAGE.parent / "app.py", *PACKAGE.parent.glob("app_*.py")]
            if (n := len(p.read_text().splitlines())) > 420}
    assert long == {}


def test_gitignore_lists_no_committed_file():
    """A committed file that .gitignore matches (e.g. checkpoints/defaults.json) is easy to lose."""
    import shutil

    import pytest

    repo = PACKAGE.parent
    if shutil.which("git") is None or not (repo / ".git").exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(["git", "ls-files", "--cached", "--ignored", "--exclude-standard"], cwd=repo,
                            capture_output=True, text=True, check=True).stdout.split()
    assert listed == []
