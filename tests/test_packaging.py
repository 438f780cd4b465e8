"""Packaging: kernels/ installs only as fused_lr.kernels; README and CI run the same test command."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import zipfile

import fused_lr.kernels
import pytest

import fused_lr

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_kernels_is_a_subpackage():
    assert fused_lr.kernels.__name__ == "fused_lr.kernels"
    assert pathlib.Path(fused_lr.kernels.__file__).resolve() == ROOT / "kernels" / "__init__.py"


def test_no_top_level_kernels_module_is_installed(tmp_path):
    """From a directory outside the repo, `kernels` must not resolve to our kernels/ folder."""
    code = (
        "import importlib.util, json; s = importlib.util.find_spec('kernels'); "
        "k = importlib.util.find_spec('fused_lr.kernels'); "
        "print(json.dumps([s.origin if s else None, k.origin]))"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    import json

    top, sub = json.loads(out.stdout)
    ours = ROOT / "kernels"
    assert top is None or not pathlib.Path(top).resolve().is_relative_to(ours), f"top-level kernels resolves to {top}"
    assert pathlib.Path(sub).resolve() == ours / "__init__.py"


def test_wheel_maps_kernels_under_fused_lr(tmp_path):
    """A wheel build places kernels/ at fused_lr/kernels/ and ships no top-level kernels/."""
    pytest.importorskip("setuptools")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("fused_lr-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "fused_lr/kernels/__init__.py" in names
    assert "fused_lr/__init__.py" in names
    assert not any(n.startswith("kernels/") for n in names), [n for n in names if n.startswith("kernels/")]


def _readme_test_command() -> str:
    text = (ROOT / "README.md").read_text()
    marker = "<!-- test-command -->"
    assert marker in text, "README must mark its test command"
    block = text.split(marker, 1)[1].split("```", 2)[1]
    lines = [ln for ln in block.splitlines() if ln.strip() and not ln.startswith("bash")]
    assert len(lines) == 1, lines
    return lines[0].strip()


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    idx = ci.index("# README test command:")
    assert ci[idx + 1].strip() == _readme_test_command()
