"""The Dockerfile builds from requirements.lock in two stages and runs the CLI as a non-root user.

No Docker engine here: these read the Dockerfile as Docker does (instructions, continuation lines, stages).
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
COMPILERS = ("g++", "gcc", "build-essential", "clang")


class Instruction(NamedTuple):
    keyword: str
    args: str


class Stage(NamedTuple):
    name: str
    image: str
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[str]:
        return [i.args for i in self.instructions if i.keyword == keyword]

    def runs(self) -> str:
        return "\n".join(self.all("RUN"))


def instructions(text: str) -> list[Instruction]:
    """Comment lines dropped (inside a continuation too), continued lines joined."""
    found, pending = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            keyword, _, args = pending.strip().partition(" ")
            found.append(Instruction(keyword.upper(), " ".join(args.split())))
            pending = ""
    return found


def stages() -> list[Stage]:
    parsed = instructions((ROOT / "Dockerfile").read_text())
    args = dict(i.args.split("=", 1) for i in parsed if i.keyword == "ARG" and "=" in i.args)
    found: list[Stage] = []
    for instruction in parsed:
        if instruction.keyword == "FROM":
            image, _, name = instruction.args.partition(" AS ")
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
            found.append(Stage(name.strip(), image, []))
        elif found:
            found[-1].instructions.append(instruction)
    return found


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_a_build_stage_with_a_compiler_and_a_slim_runtime_without_one():
    build, runtime = stages()
    assert (build.name, runtime.name) == ("build", "runtime")
    assert build.image == runtime.image == "python:3.11-slim"
    assert pyproject()["project"]["requires-python"] == ">=3.11"
    assert "apt-get install" in build.runs() and "g++" in build.runs()
    assert not any(compiler in runtime.runs() for compiler in COMPILERS)


def test_the_build_stage_makes_portable_wheels_of_the_locked_versions():
    build, _ = stages()
    wheel = next(shlex.split(run) for run in build.all("RUN") if "pip wheel" in run)
    assert wheel[wheel.index("--constraint") + 1] == "requirements.lock", "every dependency at its locked version"
    assert wheel[-1] == "." and wheel[wheel.index("--wheel-dir") + 1] == "/wheels"
    assert any("requirements.lock" in copy.split()[:-1] for copy in build.all("COPY"))
    assert any("HNSWLIB_NO_NATIVE=1" in env.split() for env in build.all("ENV")), "no -march=native wheel"


def test_the_runtime_installs_those_wheels_alone():
    _, runtime = stages()
    (install,) = [shlex.split(run) for run in runtime.all("RUN") if "pip install" in run]
    assert "--mount=type=bind,from=build,source=/wheels,target=/wheels" in install
    assert "--no-index" in install and "--find-links=/wheels" in install
    assert install[-1] == pyproject()["project"]["name"]


def test_the_runtime_runs_as_a_non_root_user_with_a_writable_working_directory():
    _, runtime = stages()
    user = runtime.all("USER")[-1].split(":")[0]
    assert user not in ("root", "0")
    useradd = shlex.split(next(run for run in runtime.all("RUN") if "useradd" in run).split("&&")[0])
    assert useradd[useradd.index("--uid") + 1] == user, "numeric, so Kubernetes' runAsNonRoot can check it"
    assert "--create-home" in useradd, "faust keeps its data folder in the working directory"
    assert useradd[useradd.index("--home-dir") + 1] == runtime.all("WORKDIR")[-1]


def test_the_entrypoint_is_the_recstream_cli():
    _, runtime = stages()
    assert json.loads(runtime.all("ENTRYPOINT")[-1]) == ["recstream"]
    assert "recstream" in pyproject()["project"]["scripts"]


def test_every_package_folder_and_build_input_is_copied():
    build, _ = stages()
    copied = {source for copy in build.all("COPY") for source in copy.split()[:-1]}
    project = pyproject()
    needed = {
        *project["tool"]["setuptools"]["package-dir"].values(),  # recstream, models, streams, serving
        "pyproject.toml",
        project["project"]["readme"],
        *project["project"]["license-files"],
        "requirements.lock",
    }
    assert {"recstream", "models", "streams", "serving"} <= needed <= copied
    assert all((ROOT / path).exists() for path in copied)


def test_dockerignore_keeps_local_state_out_and_what_the_build_copies_in():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert {".venv", ".cache", ".run", ".git", "test-artifacts", "models-store"} <= set(patterns)
    build, _ = stages()
    copied = [source for copy in build.all("COPY") for source in copy.split()[:-1]]
    paths = [path for source in copied for path in (ROOT / source, *(ROOT / source).rglob("*"))]
    files = [path.relative_to(ROOT).as_posix() for path in paths]
    kept_out = {f for f in files if "__pycache__" not in f for p in patterns if fnmatch.fnmatch(f, p)}
    assert not kept_out, f".dockerignore drops files the build copies: {sorted(kept_out)[:5]}"
