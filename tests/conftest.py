"""Shared fixtures: an isolated Keras home, tiny synthetic datasets and a tiny checkpoint."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Before any test imports Keras: it writes keras.json at import, and matplotlib needs no display.
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
_KERAS_HOME = Path(os.environ.get("ANIMALCLS_TEST_KERAS_HOME", "/tmp/animalcls-test-keras-home"))
os.environ["KERAS_HOME"] = str(_KERAS_HOME)

REPO = Path(__file__).resolve().parents[1]
SHARED_RAW = REPO.parent / "shared" / "data" / "animals10-offline" / "raw-img"

# One colour per class, so the tiny net can learn them in a few epochs.
COLOURS = {
    "gatto": (220, 40, 40),
    "ragno": (40, 220, 40),
    "farfalla": (40, 40, 220),
    "elefante": (220, 220, 40),
    "gallina": (40, 220, 220),
    "cane": (120, 120, 120),
}


def copy_checkpoint(source: Path, target: Path) -> Path:
    """Copy a checkpoint folder and re-point its split's relative dataset root, as a user moving a
    checkpoint would pass --data: the copy reads the same photos from its new place."""
    import shutil

    from animalcls.data.dataset import Split

    shutil.copytree(source, target)
    split = Split.load(source / "split.json")
    root = split.locate_root(source)
    if root is not None:
        split.root_relative = os.path.relpath(root, target)
        split.save(target / "split.json")
    return target


def make_image(path: Path, colour: tuple[int, int, int], size: int = 24, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 20, (size, size, 3))
    Image.fromarray(np.clip(np.array(colour) + noise, 0, 255).astype("uint8")).save(path)
    return path


def make_dataset(root: Path, per_class: int = 10, italian: bool = True, size: int = 24) -> Path:
    """An Animals-10 style `root/raw-img/<italian>/` (or English `root/<class>/`) tree."""
    from animalcls.core.labels import ITALIAN_TO_ENGLISH

    base = root / "raw-img" if italian else root
    for index, (folder, colour) in enumerate(COLOURS.items()):
        name = folder if italian else ITALIAN_TO_ENGLISH[folder]
        (base / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            make_image(base / name / f"{name}_{i:03d}.jpg", colour, size, seed=index * 1000 + i)
    return root


@pytest.fixture
def keras_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty KERAS_HOME for tests that look at the weights cache."""
    home = tmp_path / "keras-home"
    home.mkdir()
    monkeypatch.setenv("KERAS_HOME", str(home))
    return home


@pytest.fixture
def synthetic_data(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "animals")


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A scratch and a transfer checkpoint on the tiny backbone, trained once per session."""
    from animalcls.training.train import PRESETS
    from animalcls.training.workflows import train_checkpoint

    root = tmp_path_factory.mktemp("tiny-checkpoints")
    data_dir = make_dataset(root / "data", per_class=10)
    out = {}
    for kind, weights in (("scratch", None), ("transfer", None)):
        config = PRESETS[kind].replace(backbone="tiny", image_size=32, epochs=2, batch_size=8)
        config.weights = weights
        out[kind], *_ = train_checkpoint(data_dir, config, root / "checkpoints" / f"{kind}-tiny")
    return out


@pytest.fixture(scope="session")
def taught_pair(tiny_checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Copies of the tiny checkpoints with stored features (scope.npz, test split included)."""
    from animalcls.data.dataset import Split
    from animalcls.trust.scope_build import add_test_features, build_scope

    tmp = tmp_path_factory.mktemp("teach")
    out = {}
    for kind, source in tiny_checkpoints.items():
        folder = tmp / source.name
        copy_checkpoint(source, folder)
        root = Split.load(folder / "split.json").locate_root(folder)
        others = [str(make_image(tmp / f"{kind}-other-{i}.png", (128, 0, 128), seed=9000 + i)) for i in range(6)]
        build_scope(
            folder, others + sorted(str(p) for p in (root / "cane").iterdir()), method="combined", imagenet=False
        )
        add_test_features(folder)
        out[kind] = folder
    return out


def app_demo(checkpoints: dict[str, Path], tmp: Path, **options: object):
    """The app's Blocks on the given checkpoints, with its fine-tune store and examples in `tmp`."""
    import app

    return app.build_demo(
        checkpoints["scratch"],
        checkpoints["transfer"],
        use_hub=False,
        finetune_root=tmp / "finetunes",
        examples_dir=tmp / "examples",
        **options,
    )


@contextmanager
def launched_app(checkpoints: dict[str, Path], tmp: Path, **options: object) -> Iterator[tuple[str, object]]:
    """A running app on a free loopback port with the given checkpoints: (url, Blocks)."""
    import socket

    import app

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ANIMALCLS_FEATURE_CACHE", str(tmp / "feature-cache"))
        patch.delenv("ANIMALCLS_HUB_REPO", raising=False)
        demo = app_demo(checkpoints, tmp, **options)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        demo.launch(
            server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **app.LAUNCH_OPTIONS
        )
        try:
            yield f"http://127.0.0.1:{port}/", demo
        finally:
            demo.close()


@pytest.fixture
def shared_raw() -> Path:
    if not SHARED_RAW.is_dir():
        pytest.skip(f"real photos not available at {SHARED_RAW}")
    return SHARED_RAW


# ---------------------------------------------------------------- shared by the app and fine-tune tests


def stored_finetune(root: Path, name: str, size: int, age: float) -> Path:
    """A fine-tune folder in a store: a manifest written `age` seconds ago and a `size`-byte model."""
    import time

    folder = root / name
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text("{}")
    (folder / "model.keras").write_bytes(b"x" * size)
    past = time.time() - age
    os.utime(folder / "manifest.json", (past, past))
    return folder


def folder_hashes(folder: Path) -> dict[str, str]:
    """Every file under `folder` (relative POSIX path) -> its SHA-1: equal before and after means untouched."""
    import hashlib

    return {
        p.relative_to(folder).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def load_model(folder: Path):
    from animalcls.store.checkpoints import load_checkpoint

    return load_checkpoint(folder).model


def drain(generator) -> list[tuple]:
    return list(generator)


@pytest.fixture
def isolated_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Feature cache and default output root inside the test's tmp_path; no Hub. Modules that
    fine-tune use it for every test: `pytest.mark.usefixtures("isolated_dirs")`."""
    monkeypatch.setenv("ANIMALCLS_FEATURE_CACHE", str(tmp_path / "feature-cache"))
    monkeypatch.setenv("ANIMALCLS_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv("ANIMALCLS_HUB_REPO", raising=False)
    return tmp_path


@pytest.fixture
def animal_app(tiny_checkpoints, tmp_path: Path):
    """The web app's handlers over the tiny checkpoints, without a server."""
    from animalcls.webapp.handlers import AnimalApp

    return AnimalApp(
        tiny_checkpoints["scratch"],
        tiny_checkpoints["transfer"],
        finetune_root=tmp_path / "finetunes",
        use_hub=False,
        examples_dir=tmp_path / "no-examples",
    )


@pytest.fixture
def test_photo(tiny_checkpoints) -> str:
    from animalcls.webapp.views import held_out_photos

    return held_out_photos([tiny_checkpoints["transfer"]])[0]


# ---------------------------------------------------------------- shared by the app and browser tests

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
BROWSER_TIMEOUT_MS = 120_000  # the first classification loads both models and traces them


@pytest.fixture(scope="module")
def browser():
    """One Chromium for the module: Playwright's sync API runs one instance per thread."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where browser tests write their screenshots (printed with -s)."""
    folder = tmp_path_factory.mktemp("shots")
    print(f"screenshots: {folder}")
    return folder


class FakeResult:
    def __init__(self, path: Path, cancelled: bool, history: dict) -> None:
        self.path, self.source, self.cancelled, self.history = path, None, cancelled, history
        self.evaluation = None
        self.seconds = 1.0


def blocking_finetune(started: threading.Event):
    """A stand-in for animalcls.heads.finetune.finetune that trains until cancelled."""

    def fake(
        checkpoint_dir,
        data_dir=None,
        epochs=5,
        learning_rate=1e-3,
        unfreeze_layers=0,
        out_dir=None,
        hooks=None,
        batch_size=64,
        stored=None,
        figures=True,
    ):
        hooks.on_batch(1, 1, 4, {"loss": 1.5, "accuracy": 0.25})
        hooks.on_epoch(1, {"loss": [1.5], "accuracy": [0.25]})
        started.set()
        assert hooks.cancel.wait(30), "never cancelled"
        return FakeResult(Path(checkpoint_dir), True, {"loss": [1.5], "accuracy": [0.25]})

    return fake


def finetune_saving_two_epochs(started: threading.Event):
    """A stand-in for animalcls.heads.finetune.finetune that finishes two epochs, then waits to be
    cancelled and saves them (a folder with a manifest in its out_dir), as a cancelled run does."""

    def fake(checkpoint_dir, out_dir=None, hooks=None, **_):
        hooks.on_batch(2, 1, 4, {"loss": 1.2})
        hooks.on_epoch(2, {"loss": [1.5, 1.2], "val_loss": [1.4, 1.3]})
        started.set()
        assert hooks.cancel.wait(60), "never cancelled"
        out_dir.mkdir(parents=True)
        (out_dir / "manifest.json").write_text("{}")
        return FakeResult(out_dir, True, {"loss": [1.5, 1.2]})

    return fake
