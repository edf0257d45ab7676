"""A small reader of the project's Dockerfile for the tests (no Docker engine here): its
stages and instructions, the constraints file and the wheel cache the packaging test
installs from."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
CONSTRAINTS = ROOT / "constraints.txt"
# Wheels of the pinned dependencies, downloaded once, so a warm run installs offline.
WHEEL_CACHE = Path.home() / ".cache" / "trackop" / "wheels"


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    args: str     # the rest of the logical line, continuations joined

    def exec_form(self) -> list[str] | None:
        """The JSON array of ENTRYPOINT/CMD/RUN in exec form, else None."""
        try:
            value = json.loads(self.args)
        except ValueError:
            return None
        return value if isinstance(value, list) else None

    def words(self) -> list[str]:
        return shlex.split(self.args)


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        """ENV key=value pairs (the form this Dockerfile uses), in order; later wins."""
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for word in instruction.words():
                key, _, value = word.partition("=")
                values[key] = value
        return values

    def labels(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for instruction in self.all("LABEL"):
            for word in instruction.words():
                key, _, value = word.partition("=")
                values[key] = value
        return values


def instructions(text: str) -> list[Instruction]:
    """Logical instructions: comment lines dropped, backslash continuations joined."""
    found: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical = (pending + line).strip()
        pending = ""
        keyword, _, args = logical.partition(" ")
        found.append(Instruction(keyword.upper(), args.strip()))
    if pending:
        raise ValueError("the Dockerfile ends inside a continued line")
    return found


def global_args(path: Path = DOCKERFILE) -> dict[str, str | None]:
    """The ARGs before the first FROM, with their defaults (None: no default)."""
    found: dict[str, str | None] = {}
    for instruction in instructions(path.read_text()):
        if instruction.keyword == "FROM":
            break
        if instruction.keyword == "ARG":
            name, eq, default = instruction.args.partition("=")
            found[name.strip()] = default.strip() if eq else None
    return found


def stages(path: Path = DOCKERFILE, build_args: dict[str, str] | None = None) -> list[Stage]:
    """The stages; a FROM's ``${NAME}`` is the build argument given, else the global ARG's default."""
    defaults = {**global_args(path), **(build_args or {})}
    result: list[Stage] = []
    for instruction in instructions(path.read_text()):
        if instruction.keyword == "FROM":
            words = [w for w in instruction.words() if not w.startswith("--platform")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            image = re.sub(r"\$\{(\w+)\}", lambda m: defaults.get(m.group(1)) or m.group(0), words[0])
            result.append(Stage(image, name))
        elif instruction.keyword == "ARG" and not result:
            continue  # an ARG before the first FROM
        else:
            result[-1].instructions.append(instruction)
    return result


def builder_copies(stage: Stage) -> list[str]:
    """Paths of the build context a stage copies (COPY without --from)."""
    sources: list[str] = []
    for instruction in stage.all("COPY"):
        words = instruction.words()
        if any(w.startswith("--from") for w in words):
            continue
        sources += [w for w in words[:-1] if not w.startswith("--")]
    return sources


def pins(path: Path = CONSTRAINTS) -> dict[str, tuple[str, str]]:
    """canonical name -> (name as written, version) of every ``name==version`` line."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found: dict[str, tuple[str, str]] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        specifiers = list(requirement.specifier)
        if len(specifiers) != 1 or specifiers[0].operator != "==" or requirement.url or requirement.marker:
            raise ValueError(f"{path.name}: {line!r} is not a plain name==version pin")
        name = canonicalize_name(requirement.name)
        if name in found:
            raise ValueError(f"{path.name}: {requirement.name} is pinned twice")
        found[name] = (requirement.name, specifiers[0].version)
    return found


def fill_wheel_cache(python: Path, cache: Path = WHEEL_CACHE, constraints: Path = CONSTRAINTS) -> list[str]:
    """Download the wheels of the pins the cache lacks; return them. ``python`` is the
    interpreter they are for, and the one running this (the tags it accepts decide)."""
    from packaging.tags import sys_tags
    from packaging.utils import canonicalize_name, parse_wheel_filename

    cache.mkdir(parents=True, exist_ok=True)
    accepted = set(sys_tags())
    have = set()
    for wheel in cache.glob("*.whl"):
        name, version, _, tags = parse_wheel_filename(wheel.name)
        if tags & accepted:
            have.add((name, str(version)))
    missing = [f"{written}=={version}" for name, (written, version) in pins(constraints).items()
               if (canonicalize_name(name), version) not in have]
    if missing:
        subprocess.run([str(python), "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "--dest", str(cache), *missing], check=True, timeout=600, stdout=sys.stderr)
    return missing
