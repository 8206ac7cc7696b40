"""The web app's start-up: importing loads nothing, arguments and operator limits, API names,
missing checkpoints and the Hub (handlers called directly, no server)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import gradio as gr
import pytest
from conftest import REPO, make_image

import app  # app.py lives at the repository root
from animalcls.webapp import layout as app_layout
from animalcls.webapp.handlers import AnimalApp

pytestmark = [pytest.mark.filterwarnings("ignore:::gradio.queueing"), pytest.mark.usefixtures("isolated_dirs")]


# ---------------------------------------------------------------- building


def test_import_loads_no_model_no_tensorflow_and_no_gradio():
    code = (
        "import sys; import app; "
        "print(*(name in sys.modules for name in ('tensorflow', 'keras', 'gradio', 'onnxruntime')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False"] * 4


def test_a_bad_argument_stops_the_app_before_gradio_or_any_model_loads(tmp_path):
    code = (
        "import sys; import app\n"
        "try:\n    app.main(['--port', '7860', '--max-epochs', '0'])\n"
        "finally:\n    print(*(name in sys.modules for name in ('gradio', 'tensorflow', 'onnxruntime')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stdout.split() == ["False"] * 3
    [line] = out.stderr.strip().splitlines()
    assert line.startswith("error: ") and "--max-epochs" in line


def test_build_demo_has_stable_api_names(tiny_checkpoints, tmp_path):
    examples = tmp_path / "examples"
    examples.mkdir()
    make_image(examples / "my-cat.jpg", (200, 40, 40))
    demo = app.build_demo(
        tiny_checkpoints["scratch"],
        tiny_checkpoints["transfer"],
        use_hub=False,
        finetune_root=tmp_path / "ft",
        examples_dir=examples,
    )
    assert isinstance(demo, gr.Blocks)
    names = {fn.api_name: fn for fn in demo.fns.values()}
    # Every event named explicitly: no auto-generated or de-duplicated ("_1") names.
    assert sorted(names) == sorted(app_layout.API_NAMES)
    public = sorted(name for name, fn in names.items() if fn.api_visibility == "public")
    assert public == [
        "cancel_finetune",
        "classify",
        "finetune",
        "model_info",
        "restore_models",
        "teach_add",
        "teach_classify",
        "teach_clear",
        "teach_train",
        "use_model",
        "use_taught",
    ]
    assert names["classify_test_example"].concurrency_id == names["classify"].concurrency_id
    # Classification never queues behind a fine-tune: separate concurrency groups; fine-tunes
    # run one at a time, the others wait in Gradio's queue (which shows their place).
    assert names["classify"].concurrency_id != names["finetune"].concurrency_id
    assert names["classify"].concurrency_limit == 2
    assert names["finetune"].concurrency_limit == 1
    assert names["cancel_finetune"].concurrency_limit is None
    assert not (REPO / "app.pyi").exists()  # no Component subclass: Gradio would write a stub file


def test_parse_args_flags_and_env(monkeypatch):
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "9000")
    monkeypatch.setenv("ANIMALCLS_DATA", "/data/animals")
    args = app.parse_args([])
    assert (args.host, args.port, args.data) == ("0.0.0.0", 9000, "/data/animals")
    monkeypatch.setenv("ANIMALCLS_PORT", "9100")  # ANIMALCLS_* wins over GRADIO_*
    assert app.parse_args([]).port == 9100
    assert app.parse_args(["--port", "9200", "--host", "127.0.0.1"]).port == 9200


def _start_app(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {
        **{k: v for k, v in __import__("os").environ.items() if not k.startswith("ANIMALCLS_")},
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, str(REPO / "app.py"), "--no-hub", "--no-warm-up", *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
    )


@pytest.mark.slow
@pytest.mark.parametrize("variable, value", [("ANIMALCLS_PORT", "abc"), ("GRADIO_SERVER_PORT", "70000")])
def test_a_bad_port_setting_is_one_line(variable, value):
    run = _start_app(env={variable: value})
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "error: argument --port: the port (--port, ANIMALCLS_PORT or GRADIO_SERVER_PORT) must be a number "
        f"from 1 to 65535, got '{value}'"
    ]


@pytest.mark.slow  # starts the app up to its launch (Gradio import, Blocks built)
def test_a_busy_port_is_one_line():
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        run = _start_app(env={"ANIMALCLS_PORT": str(port)})
    assert run.returncode != 0
    assert run.stderr.strip().splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port}: the port is already in use (choose another with --port or "
        "ANIMALCLS_PORT, or --host)."
    ]


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["--max-epochs", "0"], {}, "--max-epochs, --max-finetunes and --max-finetune-mb must be at least 1"),
        (["--max-unfreeze", "-1"], {}, "--max-unfreeze at least 0"),
        ([], {"ANIMALCLS_MAX_FINETUNES": "many"}, "argument --max-finetunes: invalid int value: 'many'"),
    ],
)
def test_nonsense_operator_limits_are_one_line(args, env, message, monkeypatch, capsys):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit_info:
        app.parse_args(args)
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1
    assert lines[0].startswith("error: ") and message in lines[0]


# ---------------------------------------------------------------- missing checkpoints, Hub


def test_no_checkpoints_at_all(tmp_path):
    animal_app = AnimalApp(checkpoints_root=tmp_path / "empty", use_hub=False)
    assert any("No scratch checkpoint" in n for n in animal_app.notices)
    assert any("No transfer checkpoint" in n for n in animal_app.notices)
    assert isinstance(app_layout.build_layout(animal_app), gr.Blocks)
    views = animal_app.model_views()
    assert "No **scratch** checkpoint" in views[0] and "No **transfer** checkpoint" in views[1]
    with pytest.raises(gr.Error, match="No checkpoints are available"):
        animal_app.classify_tab.classify(str(make_image(tmp_path / "ok.png", (30, 200, 30))))
    assert "needs a transfer checkpoint" in animal_app.finetune_tab.finetune_intro()


def test_one_side_missing(tiny_checkpoints, tmp_path):
    animal_app = AnimalApp(tiny_checkpoints["scratch"], None, checkpoints_root=tmp_path / "empty", use_hub=False)
    assert animal_app.notices == ["No transfer checkpoint found (looked in empty/): the transfer side is empty."]
    scratch_info, scratch_label, transfer_info, transfer_label, verdict, *_ = animal_app.classify_tab.classify(
        str(make_image(tmp_path / "ok.png", (30, 200, 30)))
    )
    assert scratch_label and transfer_label is None
    assert "No **transfer** checkpoint" in transfer_info
    assert verdict.startswith("Only the scratch model is available")


def test_bundled_defaults_and_hub_failure(tiny_checkpoints, tmp_path, monkeypatch):
    root = tmp_path / "bundled"  # a stand-in for checkpoints/ holding one checkpoint of each kind
    for kind in ("scratch", "transfer"):
        shutil.copytree(tiny_checkpoints[kind], root / f"{kind}-tiny")
    import animalcls.store.hub

    monkeypatch.setattr(
        animalcls.store.hub,
        "pull_app_checkpoints",
        lambda repo_id=None: ({}, "Could not load checkpoints from the Hub repo x/y (offline)."),
    )
    animal_app = AnimalApp(checkpoints_root=root, use_hub=True)
    assert animal_app.registry.paths() == {"scratch": root / "scratch-tiny", "transfer": root / "transfer-tiny"}
    assert animal_app.notices == ["Could not load checkpoints from the Hub repo x/y (offline)."]
    demo = app_layout.build_layout(animal_app)
    notice = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "notice")
    assert "x/y (offline)" in notice.value and notice.visible


def test_hub_checkpoints_are_used_when_pulled(tiny_checkpoints, tmp_path, monkeypatch):
    import animalcls.store.hub

    monkeypatch.setattr(
        animalcls.store.hub,
        "pull_app_checkpoints",
        lambda repo_id=None: ({"transfer": tiny_checkpoints["transfer"]}, None),
    )
    animal_app = AnimalApp(checkpoints_root=tmp_path / "empty", use_hub=True)
    assert animal_app.registry.path("transfer") == tiny_checkpoints["transfer"]
    assert animal_app.registry.path("scratch") is None
