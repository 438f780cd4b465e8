"""What the figures were taken on: device, host, versions, git commit, date, torch.compile's cache.

``environment(device)`` gives the report's ``device``, ``host``, ``versions`` and ``git`` entries;
``device_slug`` names result files (``cpu-<cpu model>`` or the GPU's name, lower-case, dashed).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

import torch

_REPO = Path(__file__).resolve().parents[2]


def now() -> str:
    """Local date and time with its offset, to the second (ISO 8601)."""
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def device_slug(device: torch.device) -> str:
    name = slugify(device_name(device))
    return name if device.type == "cuda" else f"cpu-{name}"


def git_info() -> dict[str, Any]:
    """The checkout's commit and whether it has uncommitted changes (None when git cannot tell)."""

    def git(*a):
        return subprocess.run(["git", *a], cwd=_REPO, capture_output=True, text=True, timeout=20).stdout.strip()

    try:
        return dict(commit=git("rev-parse", "HEAD") or None, dirty=bool(git("status", "--porcelain")))
    except (OSError, subprocess.SubprocessError):
        return dict(commit=None, dirty=None)


def inductor_cache() -> dict[str, Any]:
    """Inductor's on-disk cache folder and whether it existed before this run: a compile is cheaper
    when an identical graph was compiled before (an earlier cell or run)."""
    import getpass
    import tempfile

    path = os.environ.get("TORCHINDUCTOR_CACHE_DIR") or os.path.join(tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}")
    return dict(inductor_cache_dir=path, inductor_cache_existed=os.path.isdir(path))


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:  # noqa: BLE001 - not installed or broken: recorded as None
        return None


def environment(device: torch.device) -> dict[str, Any]:
    """The report's ``device``, ``host``, ``versions`` and ``git`` entries."""
    dev: dict[str, Any] = dict(type=device.type, name=device_name(device), slug=device_slug(device))
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        dev.update(
            total_memory=props.total_memory,
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            cuda=torch.version.cuda,
        )
    return dict(
        device=dev,
        host=dict(
            cpu_model=cpu_model(),
            cpu_count=os.cpu_count(),
            torch_threads=torch.get_num_threads(),
            platform=platform.platform(),
        ),
        versions=dict(
            python=platform.python_version(),
            torch=torch.__version__,
            triton=_version("triton"),
            fused_lr=_version("fused_lr"),
        ),
        git=git_info(),
    )
