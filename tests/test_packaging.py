"""pyproject.toml and the requirements files the Space installs say the same, and the console
script it declares is a real entry point."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _requirements(path: Path) -> list[str]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return sorted(line.replace(" ", "") for line in lines if line and not line.startswith("-r"))


def _normal(specs: list[str]) -> list[str]:
    return sorted(re.sub(r"\s+", "", spec) for spec in specs)


def test_dependencies_match_requirements_txt():
    assert _normal(PROJECT["dependencies"]) == _requirements(REPO / "requirements.txt")


def test_dev_extra_matches_requirements_dev_txt():
    assert _normal(PROJECT["optional-dependencies"]["dev"]) == _requirements(REPO / "requirements-dev.txt")
    assert (REPO / "requirements-dev.txt").read_text().startswith("-r requirements.txt")


def test_the_console_script_is_the_cli_and_answers_help_without_tensorflow():
    target = PROJECT["scripts"]["animalcls"]
    module, function = target.split(":")
    code = (
        f"import sys; from {module} import {function} as main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as exit:\n    code = exit.code\n"
        "print('TF' if 'tensorflow' in sys.modules else 'no TF', code)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "usage:" in run.stdout and run.stdout.strip().endswith("no TF 0")


def test_the_public_api_is_lazy_and_every_name_resolves():
    code = (
        "import sys, animalcls\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')], 'eager import'\n"
        "missing = [n for n in animalcls.__all__ if getattr(animalcls, n, None) is None]\n"
        "print('missing', missing)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "missing []"
