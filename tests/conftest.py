"""Shared fixtures.

`shared_data` is the one way tests find the real third-party data in ../shared/data (or
$DECNEF_SHARED_DATA). Where it is missing, tests that need it are skipped on a developer's
machine but fail in CI (CI=true), because a CI run that silently skips real-data tests checks
nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _find_shared_data() -> Path | None:
    env = os.environ.get("DECNEF_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / "data")
    for c in candidates:
        if (c / "dicom").is_dir() and (c / "task_bold").is_dir():
            return c
    return None


def _unavailable(msg: str) -> None:
    """A missing prerequisite: skipped on a developer's machine, a failure in CI."""
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    found = _find_shared_data()
    if found is None:
        _unavailable("real test data not found: expected ../shared/data beside the repo or $DECNEF_SHARED_DATA")
    return found


@pytest.fixture(scope="session")
def dcm2niix():
    """`dcm2niix(src, out_dir, *flags)`: run the reference converter (uncompressed, files named
    `ref*`) into out_dir; the tests compare `decnef convert` with what it writes."""
    exe = shutil.which("dcm2niix")
    if exe is None:
        _unavailable("dcm2niix not installed (pip install dcm2niix)")

    def run(src: Path, out_dir: Path, *flags: str) -> Path:
        out_dir.mkdir(parents=True, exist_ok=True)
        r = subprocess.run([exe, "-z", "n", *flags, "-f", "ref", "-o", str(out_dir), str(src)],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        return out_dir

    return run


@pytest.fixture(scope="session")
def dicom_dir(shared_data: Path) -> Path:
    return shared_data / "dicom"


@pytest.fixture(scope="session")
def studyforrest_dir(shared_data: Path) -> Path:
    return shared_data / "task_bold" / "studyforrest_visloc_philips_run1"


@pytest.fixture(scope="session")
def haxby_dir(shared_data: Path) -> Path:
    return shared_data / "task_bold" / "haxby2001_pymvpa_1slice"


@pytest.fixture(scope="session")
def forrest(studyforrest_dir: Path, request, tmp_path_factory):
    """(data (N, 80, 80, 35), affine) of the studyforrest run's first volumes, read once per
    session (and kept in pytest's cache between sessions) for the engine-level tests."""
    from test_engine_data import forrest_arrays

    cache = getattr(request.config, "cache", None)
    folder = cache.mkdir("decnef_engine") if cache is not None else tmp_path_factory.mktemp("forrest")
    data, affine = forrest_arrays(studyforrest_dir, folder)
    data.setflags(write=False)  # shared by every module: a test that writes into it fails loudly
    affine.setflags(write=False)
    return data, affine
