"""Reading a Dockerfile and a .dockerignore as Docker does, for tests without Docker.

:func:`parse` splits a Dockerfile into stages of instructions (line continuations,
comment lines, ``--flag=value`` options, ``ARG`` defaults substituted into ``FROM``).
:class:`DockerIgnore` decides what a build context lets through, with the rules of
moby's ``patternmatcher``: patterns are matched in order against a path and each of
its parent directories, the last match wins, ``!`` re-includes, ``*`` and ``?`` stay
within one path element, ``**`` spans any number of them.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
import re
import shlex
from pathlib import Path

_ARG_REF = re.compile(r"\$\{(\w+)\}|\$(\w+)")


@dataclasses.dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: RUN, COPY, ENV...
    flags: dict[str, str]  # --from=builder -> {"from": "builder"}
    args: str  # the rest, continuations joined

    def words(self) -> list[str]:
        """The arguments: a JSON array's items (exec form), else shell words."""
        if self.args.startswith("["):
            return [str(w) for w in json.loads(self.args)]
        return shlex.split(self.args)

    def pairs(self) -> dict[str, str]:
        """``KEY=value ...`` (ENV, LABEL, ARG), quotes removed."""
        found = {}
        for word in shlex.split(self.args):
            key, _, value = word.partition("=")
            found[key] = value
        return found


@dataclasses.dataclass
class Stage:
    base: str  # the FROM image (ARGs substituted) or an earlier stage's name
    name: str | None
    instructions: list[Instruction] = dataclasses.field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for instruction in self.all("ENV"):
            found.update(instruction.pairs())
        return found


@dataclasses.dataclass
class Dockerfile:
    args: dict[str, str]  # global ARGs (before the first FROM) and their defaults
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"the Dockerfile has no stage named {name!r}")


def _logical_lines(text: str) -> list[str]:
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#"):
            continue  # comments, also inside a continued instruction
        if not stripped and not current:
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1].rstrip() + " "
            continue
        current += stripped
        if current.strip():
            lines.append(current.strip())
        current = ""
    if current.strip():
        lines.append(current.strip())
    return lines


def _substitute(text: str, args: dict[str, str]) -> str:
    return _ARG_REF.sub(lambda m: args.get(m.group(1) or m.group(2), m.group(0)), text)


def parse(text: str) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(text):
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        flags: dict[str, str] = {}
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            key, _, value = flag[2:].partition("=")
            flags[key] = value
            rest = rest.strip()
        instruction = Instruction(keyword, flags, rest)
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(_substitute(words[0], global_args), name))
        elif not stages:
            if keyword == "ARG":
                global_args.update(instruction.pairs())
        else:
            stages[-1].instructions.append(instruction)
    return Dockerfile(global_args, stages)


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = "^"
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out += "(.*/)?"
            i += 3
            continue
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            end = pattern.index("]", i)
            out += pattern[i : end + 1]
            i = end
        else:
            out += re.escape(c)
        i += 1
    return re.compile(out + "$")


@dataclasses.dataclass(frozen=True)
class DockerIgnore:
    rules: tuple[tuple[bool, re.Pattern[str]], ...]  # (exclude?, pattern)

    @classmethod
    def read(cls, path: Path) -> DockerIgnore:
        return cls.parse(path.read_text() if path.exists() else "")

    @classmethod
    def parse(cls, text: str) -> DockerIgnore:
        rules = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            exclude = not line.startswith("!")
            pattern = posixpath.normpath(line.lstrip("!").strip()).lstrip("/")
            rules.append((exclude, _pattern_regex(pattern)))
        return cls(tuple(rules))

    def excluded(self, path: str) -> bool:
        """Whether ``path`` (relative to the context, with /) stays out of the context."""
        parts = posixpath.normpath(path).split("/")
        candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        result = False
        for exclude, regex in self.rules:
            if any(regex.match(candidate) for candidate in candidates):
                result = exclude
        return result
