"""``./dev``'s apt_install, run as the script defines it against a PATH of stand-ins for apt-get and the tools it
looks for (no package is installed): what a fresh Debian machine lacks to build the venv is asked for."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PRESENT = ("redis-server", "promtool", "java", "mvn", "chromium")


def apt_install(tmp_path: Path, tools: dict[str, str]) -> list[str]:
    """The packages apt_install asks apt-get for with only ``tools`` (name: script body) and ``PRESENT`` on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    asked = tmp_path / "asked"
    stand_ins = {name: "exit 0" for name in PRESENT} | {"apt-get": f'echo "$@" >> {asked}', "id": "echo 0"} | tools
    for name, body in stand_ins.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    script = (REPO / "dev").read_text()
    function = re.search(r"^apt_install\(\) \{.*?^\}$", script, re.M | re.S)
    assert function is not None
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path)}
    subprocess.run([shutil.which("bash") or "/bin/bash", "-euo", "pipefail", "-c", f"{function[0]}\napt_install"],
                   env=env, check=True)  # fmt: skip
    lines = asked.read_text().splitlines() if asked.exists() else []
    return lines[-1].split()[3:] if lines else []  # install -y -q PACKAGES


def test_a_python3_without_venv_or_headers_and_no_compiler_get_their_packages(tmp_path: Path):
    """Debian's python3 alone cannot make the venv (ensurepip is in python3-venv) nor build hnswlib 0.8.0, which
    has no CPython 3.11 wheel (Python.h is in python3-dev, and it needs g++)."""
    assert apt_install(tmp_path, {"python3": "exit 1"}) == ["python3-venv", "python3-dev", "g++"]


def test_a_python3_with_both_and_a_compiler_need_nothing(tmp_path: Path):
    """This machine's python3 (a pyenv 3.11 build, ensurepip and headers included: the venv's base) and g++ need no
    package."""
    assert apt_install(tmp_path, {"python3": f'exec {sys.executable} "$@"', "g++": "exit 0"}) == []


def test_hnswlib_is_built_portably_as_in_the_dockerfile():
    """Without HNSWLIB_NO_NATIVE pip builds hnswlib with -march=native: a venv then breaks on an older CPU."""
    exported = subprocess.run(["bash", "-c", f"eval \"$(grep '^export' {REPO / 'dev'})\"; env"], capture_output=True,
                              text=True, check=True, env={"PATH": os.environ["PATH"]}).stdout  # fmt: skip
    assert "HNSWLIB_NO_NATIVE=1" in exported.splitlines()
    assert "ENV HNSWLIB_NO_NATIVE=1" in (REPO / "Dockerfile").read_text()
