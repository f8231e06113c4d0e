"""The image's Dockerfile has the structure production needs: multi-stage, a wheel installed
without extras, a numeric non-root user, nothing to write on the root filesystem, `voxgate serve`
as the entrypoint, OCI labels, and a build context that leaves secrets and caches out.

No image registry is reachable where these tests run, so the image is not built here; this reads
the instructions as Docker's parser does (continuation lines joined, comments dropped).
"""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from dataclasses import dataclass
from typing import Any

import yaml

from tests.support.helm import CHART, REPO

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def instructions() -> list[Instruction]:
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "a continuation line ends the file"
    return [Instruction(keyword.upper(), rest.strip()) for keyword, _, rest in (s.partition(" ") for s in logical)]


def stages() -> list[list[Instruction]]:
    """Instructions grouped by FROM (global ARGs before the first FROM are their own group)."""
    groups: list[list[Instruction]] = [[]]
    for instruction in instructions():
        if instruction.keyword == "FROM":
            groups.append([])
        groups[-1].append(instruction)
    return groups[1:]


def global_args() -> dict[str, str]:
    found = {}
    for instruction in instructions():
        if instruction.keyword == "FROM":
            break
        if instruction.keyword == "ARG":
            name, _, default = instruction.args.partition("=")
            found[name] = default
    return found


def of(stage: list[Instruction], keyword: str) -> list[str]:
    return [i.args for i in stage if i.keyword == keyword]


def env_of(stage: list[Instruction]) -> dict[str, str]:
    values: dict[str, str] = {}
    for args in of(stage, "ENV"):
        for name, value in re.findall(r'([A-Z_][A-Z0-9_]*)=("[^"]*"|\S+)', args):
            values[name] = value.strip('"')
    return values


def chart_values() -> dict[str, Any]:
    return dict(yaml.safe_load((CHART / "values.yaml").read_text()))


def test_it_is_a_multi_stage_build_on_a_slim_python() -> None:
    builder, runtime = stages()
    assert of(builder, "FROM")[0].endswith(" AS builder")
    base = of(runtime, "FROM")[0].split()[0]
    resolved = re.sub(r"\$\{(\w+)\}", lambda m: global_args()[m.group(1)], base)
    assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", resolved), resolved
    # The runtime stage takes the built venv from the builder and no source tree.
    copies = of(runtime, "COPY")
    assert copies == ["--from=builder /opt/voxgate /opt/voxgate"]


def test_the_builder_installs_the_wheel_without_extras() -> None:
    builder, _ = stages()
    run = " ".join(of(builder, "RUN"))
    assert "pip wheel --no-deps" in run
    assert re.search(r"pip install /dist/voxgate-\*\.whl(\s|$)", run)
    assert "[" not in run and "-e " not in run, "no extras and no editable install"
    # Every package the wheel ships is in the build context.
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = {source for args in of(builder, "COPY") for source in args.split()[:-1]}
    assert {p.rstrip("*") for p in packages} | {"pyproject.toml", "README.md"} <= copied


def test_it_runs_as_a_numeric_non_root_user_matching_the_chart() -> None:
    _, runtime = stages()
    users = of(runtime, "USER")
    assert users, "the runtime stage sets USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit() and int(gid) > 0
    # The last USER is in force for ENTRYPOINT; nothing after it switches back.
    assert [i.keyword for i in runtime].index("USER") < [i.keyword for i in runtime].index("ENTRYPOINT")
    pod = chart_values()["podSecurityContext"]
    assert (pod["runAsUser"], pod["runAsGroup"]) == (int(uid), int(gid))


def test_it_needs_no_writable_root_filesystem() -> None:
    _, runtime = stages()
    variables = env_of(runtime)
    assert variables["PYTHONDONTWRITEBYTECODE"] == "1"
    assert variables["HOME"] == "/tmp"
    volumes = set(json.loads(of(runtime, "VOLUME")[0]))
    assert volumes == {variables["VOXGATE_SPOOL_DIR"], "/tmp"}
    assert variables["VOXGATE_SPOOL_DIR"] == chart_values()["spool"]["mountPath"]


def test_the_entrypoint_is_voxgate_serve_on_the_exposed_port() -> None:
    _, runtime = stages()
    assert json.loads(of(runtime, "ENTRYPOINT")[-1]) == ["voxgate"]
    assert json.loads(of(runtime, "CMD")[-1]) == ["serve"]
    variables = env_of(runtime)
    assert of(runtime, "EXPOSE") == [variables["VOXGATE_PORT"]] == [str(chart_values()["containerPort"])]
    assert variables["VOXGATE_HOST"] == "0.0.0.0"
    # Kubernetes probes /healthz and /readyz; an image HEALTHCHECK would be a second, unused opinion.
    assert not of(runtime, "HEALTHCHECK")


def test_it_carries_oci_labels() -> None:
    _, runtime = stages()
    labels = dict(re.findall(r'(org\.opencontainers\.image\.[a-z]+)="([^"]*)"', " ".join(of(runtime, "LABEL"))))
    for key in ("title", "description", "version", "revision", "created", "licenses"):
        assert labels.get(f"org.opencontainers.image.{key}"), key
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"


def test_the_build_context_leaves_local_state_and_tests_out() -> None:
    patterns = [
        line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path.split("/")[0], p) for p in patterns)

    for path in (".git", ".venv", "tests", ".voxgate", ".mypy_cache", "gateway/__pycache__", "dist", "bench"):
        assert ignored(path), path
    builder, _ = stages()
    for args in of(builder, "COPY"):
        for source in args.split()[:-1]:
            assert not ignored(source), f"the Dockerfile copies {source}, which .dockerignore leaves out"
