"""The Dockerfile and its constraints file, read without a Docker engine: the stages install
exactly the pinned runtime dependencies, the image runs as a numeric non-root user with
nothing to write outside /tmp, and every runtime dependency of pyproject.toml is pinned."""

from __future__ import annotations

import importlib.util
import re
import tomllib
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import dockerfile
from dockerfile import CONSTRAINTS, ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
BASE_IMAGE = "python:3.11-slim-bookworm"


@pytest.fixture(scope="module")
def stages() -> list[dockerfile.Stage]:
    return dockerfile.stages()


@pytest.fixture(scope="module")
def final(stages) -> dockerfile.Stage:
    return stages[-1]


def test_two_stages_on_the_same_pinned_slim_python(stages):
    assert [s.name for s in stages] == ["builder", None]
    # A tag, not latest: the interpreter the virtualenv was made with in the builder is the
    # one the final stage runs. One build argument names it for both stages (the test bed
    # passes a base made from Debian's packages); its default is what users get.
    assert dockerfile.global_args() == {"BASE_IMAGE": BASE_IMAGE}
    assert [s.image for s in stages] == [BASE_IMAGE, BASE_IMAGE]
    other = dockerfile.stages(build_args={"BASE_IMAGE": "trackop.local/python:abc"})
    assert [s.image for s in other] == ["trackop.local/python:abc"] * 2


def test_every_pip_install_uses_the_one_constraints_file(stages):
    referenced = set()
    installs = []
    for stage in stages:
        for instruction in stage.all("RUN") + stage.all("COPY"):
            referenced.update(re.findall(r"[\w./-]*constraints[\w.-]*", instruction.args))
        for instruction in stage.all("RUN"):
            for command in re.split(r"&&|;", instruction.args):
                words = command.split()
                if "pip" in " ".join(words[:2]) and "install" in words:
                    installs.append(words)
    assert referenced == {"constraints.txt", "/opt/trackop/constraints.txt"}
    assert CONSTRAINTS.name == "constraints.txt" and CONSTRAINTS.is_file()
    assert installs, "no pip install in the Dockerfile"
    for words in installs:
        # Either exactly the pins (no resolution at all) or trackop held to them, offline.
        pinned = "--no-deps" in words and words[words.index("--requirement") + 1] == "constraints.txt" \
            if "--requirement" in words else False
        constrained = "--constraint" in words and words[words.index("--constraint") + 1] == "constraints.txt" \
            and "--no-index" in words
        assert pinned or constrained, f"pip install without the constraints file: {' '.join(words)}"
    assert "constraints.txt" in dockerfile.builder_copies(stages[0])


def test_the_final_stage_is_the_builders_virtualenv(final):
    copies = [i.words() for i in final.all("COPY")]
    assert copies == [["--from=builder", "/opt/trackop", "/opt/trackop"]]
    assert not any("pip" in i.args for i in final.all("RUN")), "the final stage installs nothing itself"
    assert final.env()["PATH"].startswith("/opt/trackop/bin:")


def test_runs_as_a_numeric_non_root_user(final):
    users = final.all("USER")
    assert len(users) == 1
    user, _, group = users[0].args.partition(":")
    assert user.isdigit() and int(user) == 10001, "runAsNonRoot can verify only a numeric uid"
    assert group.isdigit() and int(group) != 0
    # Nothing after USER switches back.
    assert final.instructions.index(users[0]) > max(final.instructions.index(i) for i in final.all("RUN"))


def test_nothing_to_write_outside_tmp(final):
    env = final.env()
    assert env["HOME"] == "/tmp" and env["TMPDIR"] == "/tmp"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert final.all("WORKDIR")[-1].args == "/tmp"


def test_entrypoint_command_and_ports(final):
    assert final.all("ENTRYPOINT")[-1].exec_form() == ["trackop"]
    assert final.all("CMD")[-1].exec_form() == ["run", "--all-namespaces"]
    assert sorted(final.all("EXPOSE")[-1].args.split()) == ["8080", "9090", "9443"]
    assert PYPROJECT["project"]["scripts"]["trackop"] == "trackop.cli:main"


def test_oci_labels(final):
    labels = final.labels()
    arguments = dict(w.partition("=")[::2] for i in final.all("ARG") for w in i.words())
    assert labels["org.opencontainers.image.title"] == "trackop"
    assert labels["org.opencontainers.image.licenses"] == PYPROJECT["project"]["license"]
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    assert arguments["VERSION"] == PYPROJECT["project"]["version"]
    assert {"org.opencontainers.image.revision", "org.opencontainers.image.created",
            "org.opencontainers.image.description"} <= set(labels)


def test_dockerignore_keeps_the_context_to_what_is_copied(stages):
    lines = [line for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line and not line.startswith("#")]
    assert lines[0] == "*"
    included = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert set(dockerfile.builder_copies(stages[0])) == included


def test_every_runtime_dependency_is_pinned():
    pins = dockerfile.pins()
    for line in PYPROJECT["project"]["dependencies"]:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} (pyproject.toml) is not pinned in constraints.txt"
        assert requirement.specifier.contains(pins[name][1], prereleases=True), \
            f"constraints.txt pins {requirement.name}=={pins[name][1]}, outside {requirement.specifier}"
        # What an extra pulls in (psycopg[binary] -> psycopg-binary) is pinned too.
        for extra in requirement.extras:
            for needed in metadata.distribution(requirement.name).requires or []:
                needed = Requirement(needed)
                if needed.marker is not None and needed.marker.evaluate({"extra": extra}) \
                        and not needed.marker.evaluate({"extra": ""}):
                    assert canonicalize_name(needed.name) in pins, f"{needed.name} ({line}) is not pinned"


def test_the_test_extra_stays_out_of_the_image():
    pins = dockerfile.pins()
    runtime = {canonicalize_name(Requirement(r).name) for r in PYPROJECT["project"]["dependencies"]}
    for line in PYPROJECT["project"]["optional-dependencies"]["test"]:
        name = canonicalize_name(Requirement(line).name)
        if name not in runtime:
            assert name not in pins, f"{name} is a test dependency, not a runtime one"


def test_constraints_match_the_installed_runtime_dependencies():
    """The image gets the versions the tests run against (hack/setup.sh installs .venv with
    the same constraints); a new or changed dependency needs the file regenerated."""
    spec = importlib.util.spec_from_file_location("lock", ROOT / "hack" / "constraints.py")
    lock = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lock)
    assert CONSTRAINTS.read_text() == lock.render(), \
        "constraints.txt is stale: run .venv/bin/python hack/constraints.py"
