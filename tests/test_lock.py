"""requirements.lock agrees with pyproject.toml, and the environment is the lock.

`./dev setup` installs exactly the lock (versions and hashes, `--no-deps`); pyproject.toml
keeps compatible ranges for people who install Floodgate as a library. If someone edits
one without the other (`./dev lock` refreshes the lock), these tests fail in CI:

* every requirement of pyproject.toml (dependencies and the dev extra) is pinned in the
  lock, at a version its range admits;
* every pinned package carries at least one sha256 hash, and the lock names no index or
  local path (a lock that only works on one machine is no lock);
* the lock holds nothing the requirements do not reach (a dependency removed from
  pyproject.toml must leave the lock too), walking the installed packages' metadata;
* the installed environment has exactly the locked versions.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from service.config import REPO_ROOT

LOCK = REPO_ROOT / "requirements.lock"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def _project() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text("utf-8"))["project"]


def _requirements() -> list[Requirement]:
    project = _project()
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]


def _locked() -> dict[str, tuple[str, int]]:
    """Canonical name -> (version, number of hashes) for every pinned package."""
    out: dict[str, tuple[str, int]] = {}
    current = None
    for line in LOCK.read_text("utf-8").splitlines():
        m = PIN.match(line)
        if m:
            current = canonicalize_name(m.group(1))
            out[current] = (m.group(2).rstrip(" \\"), 0)
        elif current and line.strip().startswith("--hash=sha256:"):
            version, hashes = out[current]
            out[current] = (version, hashes + 1)
        elif not line.startswith((" ", "#")) and line.strip():
            current = None
    return out


def test_every_requirement_is_pinned_within_its_range():
    locked = _locked()
    for req in _requirements():
        name = canonicalize_name(req.name)
        assert name in locked, f"{req} is in pyproject.toml but not in requirements.lock"
        version = locked[name][0]
        assert req.specifier.contains(Version(version), prereleases=True), (
            f"requirements.lock pins {name}=={version}, outside pyproject.toml's {req}"
        )


def test_every_pin_has_a_hash_and_the_lock_names_no_index_or_path():
    text = LOCK.read_text("utf-8")
    assert not re.search(r"^\s*(-f|--find-links|-i|--index-url|--extra-index-url|-e)\b", text, re.M)
    assert "file://" not in text and "/opt/" not in text
    unhashed = [n for n, (_, hashes) in _locked().items() if hashes == 0]
    assert not unhashed, f"pins without a hash: {unhashed}"
    assert _locked()["torch"][0].startswith("2.13.0")


def _closure(roots: list[Requirement]) -> set[str]:
    """Every distribution the requirements reach, from the installed packages' metadata."""
    env = default_environment()
    seen: set[str] = set()
    todo = [(r, frozenset(r.extras)) for r in roots]
    while todo:
        req, extras = todo.pop()
        name = canonicalize_name(req.name)
        key = f"{name}[{','.join(sorted(extras))}]"
        if key in seen:
            continue
        seen.add(key)
        for raw in metadata.requires(name) or []:
            dep = Requirement(raw)
            if dep.marker is None or any(
                dep.marker.evaluate({**env, "extra": e}) for e in (extras or {""})
            ):
                todo.append((dep, frozenset(dep.extras)))
    return {k.split("[")[0] for k in seen}


def test_the_lock_holds_nothing_the_requirements_do_not_reach():
    try:
        reached = _closure(_requirements())
    except metadata.PackageNotFoundError as exc:  # pragma: no cover - a broken environment
        pytest.fail(f"a required package is not installed: {exc}")
    # pip-compile --allow-unsafe also pins the build backend that `./dev setup` builds the
    # project with (pyproject.toml's [build-system])
    build = {canonicalize_name(Requirement(r).name) for r in tomllib.loads(
        (REPO_ROOT / "pyproject.toml").read_text("utf-8"))["build-system"]["requires"]}  # fmt: skip
    orphans = set(_locked()) - reached - build
    assert not orphans, f"requirements.lock pins packages nothing requires: {sorted(orphans)}"


def test_the_installed_environment_is_the_lock():
    wrong = {}
    for name, (version, _) in _locked().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            wrong[name] = (version, None)
            continue
        if Version(installed) != Version(version):
            wrong[name] = (version, installed)
    assert not wrong, f"locked vs installed: {wrong} (run ./dev setup)"
