"""House rules the layout relies on: subpackages by job, light modules stay light, no import
cycles, gradio and huggingface_hub each behind one door, a leaf checkpoint store, short modules."""

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "animalcls"
LIGHT = (
    "serving.inference",
    "serving.batch_predict",
    "serving.onnx_engine",
    "serving.features",
    "serving.model_cache",
    "webapp.state",
    "webapp.views",
    "webapp.checkpoints",
    "webapp.sessions",
    "webapp.tabs.teach_session",
    "webapp.temp",
    "webapp.lesson",
    "webapp.tabs.classify_answers",
    "webapp.tabs.finetune_status",
    "webapp.space",
    "cli.progress",
    "cli.main",
    "cli.checks",
    "cli.parser",
    "cli.teach",
    "core.hooks",
    "core.settings",
    "core.atomic",
    "training.distribute",
    "heads.teach",
    "heads.numpy_head",
    "heads.head_fit",
    "data.teach_folders",
    "store.manifest",
    "store.checkpoints",
)
SUBPACKAGES = {"core", "data", "models", "store", "training", "heads", "serving", "trust", "cli", "webapp"}


def _modules() -> dict[str, Path]:
    """Dotted name (without the `animalcls.` prefix) -> file, for every module of the package."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(path: Path) -> set[str]:
    """animalcls modules (dotted, without the prefix) that `path` imports anywhere, deferred too."""
    modules = set(_modules())
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("animalcls"):
            base = node.module.removeprefix("animalcls").lstrip(".")
            for alias in node.names:
                candidate = f"{base}.{alias.name}".lstrip(".")
                found.add(candidate if candidate in modules else base)
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("animalcls.") for a in node.names if a.name.startswith("animalcls."))
    return {name for name in found if name in modules and name}


def _top_level_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_the_package_is_subpackages_by_job():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 12, top
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"} == SUBPACKAGES
    for folder in [p for p in PACKAGE.rglob("*") if p.is_dir() and p.name != "__pycache__"]:
        assert (folder / "__init__.py").is_file(), folder
        assert len(list(folder.glob("*.py"))) <= 15, folder


def test_the_web_app_is_a_package_and_app_py_its_thin_entry_point():
    assert sorted(p.name for p in REPO.glob("*.py")) == ["app.py"]
    assert len((REPO / "app.py").read_text().splitlines()) <= 80


def test_light_modules_import_neither_tensorflow_nor_keras():
    imports = "; ".join(f"import animalcls.{name}" for name in LIGHT)
    code = f"import sys; {imports}; print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_the_web_apps_state_and_views_import_no_gradio():
    """Gradio-free state and views apart from the Gradio layout and handlers (webapp/tabs/, with
    each tab's Gradio-free part beside it): what the page shows is testable without a server."""
    free = [name for name in LIGHT if name.startswith("webapp.")]
    imports = "; ".join(f"import animalcls.{name}" for name in free)
    code = f"import sys; {imports}; print(sorted(m for m in sys.modules if m.split('.')[0] == 'gradio'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_no_import_cycles_inside_the_package():
    graph = {name: _imports(path) - {name} for name, path in _modules().items()}
    # A package's __init__ is not an edge of the layering: importing a.b runs a/__init__ first.
    graph = {name: {d for d in deps if d not in SUBPACKAGES} for name, deps in graph.items() if name}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    assert sorted(m for m in graph if reaches(m, m, set())) == []


def test_gradio_only_in_the_web_app_and_huggingface_hub_only_in_the_hub_module():
    for name, path in _modules().items():
        imported = _top_level_imports(path)
        if not name.startswith("webapp"):
            assert "gradio" not in imported and "gradio_client" not in imported, name
        if name != "store.hub":
            assert "huggingface_hub" not in imported, name


def test_the_checkpoint_store_is_a_leaf():
    allowed = {"core.atomic", "core.errors", "core.settings", "store.manifest"}
    assert _imports(PACKAGE / "store" / "checkpoints.py") <= allowed
    assert _imports(PACKAGE / "store" / "manifest.py") <= allowed


def test_no_library_function_is_named_like_a_test():
    names = [
        f"{path.stem}.{node.name}"
        for path in [*PACKAGE.rglob("*.py"), REPO / "app.py"]
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name.lower().startswith("test")
    ]
    assert names == []


def test_no_module_is_much_over_400_lines():
    long = {
        str(p.relative_to(REPO)): n
        for p in [*PACKAGE.rglob("*.py"), REPO / "app.py"]
        if (n := len(p.read_text().splitlines())) > 420
    }
    assert long == {}


def test_no_test_module_imports_another():
    tests = {p.stem for p in (REPO / "tests").glob("test_*.py")}
    for path in (REPO / "tests").glob("*.py"):
        imported = {n.split(".")[-1] for n in _top_level_imports(path) | _from_tests(path)}
        assert not (imported & tests), path.name


def _from_tests(path: Path) -> set[str]:
    return {
        node.module
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tests.")
    }


def test_gitignore_lists_no_committed_file():
    """A committed file that .gitignore matches (e.g. checkpoints/defaults.json) is easy to lose."""
    import shutil

    import pytest

    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--ignored", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert listed == []


def test_one_numpy_head_trainer_one_adam_and_one_backprop():
    """Fine-tune and teach train heads through one trainer (heads.head_fit), which steps the one
    Adam over the one backprop (heads.numpy_head): nothing else in the package, scripts or
    benchmarks defines either again or calls backprop itself."""
    places, callers = set(), set()
    for path in [*PACKAGE.rglob("*.py"), *(REPO / "scripts").glob("*.py"), *(REPO / "benchmarks").glob("*.py")]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "backprop":
                callers.add(str(path.relative_to(REPO)))
            if not isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                continue
            named = node.name.lower().strip("_") in ("adam", "backprop")
            decays = node in tree.body and "0.999" in ast.unparse(node)  # Adam's second-moment decay
            if named or decays:
                places.add(f"{path.relative_to(REPO)}:{node.name}")
    assert places == {"animalcls/heads/numpy_head.py:Adam", "animalcls/heads/numpy_head.py:backprop"}
    assert callers == {"animalcls/heads/head_fit.py"}


def _functions(paths: list[Path]) -> list[tuple[str, ast.FunctionDef]]:
    """("file:function", node) for every function defined in `paths`."""
    return [
        (f"{path.relative_to(REPO)}:{node.name}", node)
        for path in paths
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef)
    ]


def _library_and_tools() -> list[Path]:
    return [*PACKAGE.rglob("*.py"), *(REPO / "scripts").glob("*.py"), *(REPO / "benchmarks").glob("*.py")]


def _reads_dense_weights(function: ast.FunctionDef) -> bool:
    """Takes a head's Dense weights out as arrays: `<layer>.kernel.numpy()`, a Keras weights file
    opened read-only with h5py, or Dense layers picked from a saved config by class name."""
    for node in ast.walk(function):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            if node.func.attr == "numpy" and isinstance(owner, ast.Attribute) and owner.attr in ("kernel", "bias"):
                return True
            if node.func.attr == "File" and getattr(owner, "id", "") == "h5py":
                mode = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords), None)
                if mode is None or (isinstance(mode, ast.Constant) and mode.value == "r"):
                    return True
        if isinstance(node, ast.Compare) and any(
            isinstance(side, ast.Constant) and side.value == "Dense" for side in [node.left, *node.comparators]
        ):
            return True
    return False


def test_one_head_reader():
    """A checkpoint's Dense head is read in one place (heads.reader), from a Keras model or from
    model.keras: nothing else in the package, scripts or benchmarks reads Dense weights itself."""
    readers = {name for name, node in _functions(_library_and_tools()) if _reads_dense_weights(node)}
    assert readers and all(name.startswith("animalcls/heads/reader.py:") for name in readers), readers


def _shares_model_tensors(function: ast.FunctionDef) -> bool:
    """Builds a keras.Model on an existing model's input whose outputs are that model's own
    tensors (layer outputs and inputs, no new layer called): a sub-model of it."""
    assigned: dict[str, list[ast.expr]] = {}
    for node in ast.walk(function):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    assigned.setdefault(target.id, []).append(node.value)

    def existing_tensors(expr: ast.expr) -> bool:
        values = assigned.get(expr.id, []) if isinstance(expr, ast.Name) else [expr]
        calls = [
            c
            for v in values
            for c in ast.walk(v)
            if isinstance(c, ast.Call) and getattr(c.func, "attr", "") != "get_layer"
        ]
        return bool(values) and not calls

    for node in ast.walk(function):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "Model":
            arguments = [*node.args, *(k.value for k in node.keywords if k.arg in ("inputs", "outputs"))][:2]
            if len(arguments) == 2 and getattr(arguments[0], "attr", "") in ("input", "inputs"):
                if existing_tensors(arguments[1]):
                    return True
    return False


def test_one_keras_sub_model_builder():
    """Every Keras model that returns a model's own intermediate tensors (probabilities, pooled
    features, feature map) is built by serving.forward.outputs_model."""
    builders = {name for name, node in _functions(_library_and_tools()) if _shares_model_tensors(node)}
    assert builders == {"animalcls/serving/forward.py:outputs_model"}


def test_one_stored_features_dataclass_and_one_loader():
    """Pooled features a checkpoint stores are read by store.stored_features.load_features into
    its StoredFeatures, for fine-tuning, teaching and the detector's train features alike: no
    other module defines a StoredFeatures or reads features.npz or scope.npz's parts itself."""
    classes, readers = set(), set()
    for path in _library_and_tools():
        text, name = path.read_text(), str(path.relative_to(REPO))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and "StoredFeatures" in node.name:
                classes.add(f"{name}:{node.name}")
        if "np.load(" in text and ("FEATURES_FILE" in text or "features.npz" in text):
            readers.add(name)
    assert classes == {"animalcls/store/stored_features.py:StoredFeatures"}
    assert readers == {"animalcls/store/stored_features.py"}, readers
