"""The service images: where each Dockerfile is, what it says, and whether it can run its service.

No Docker engine is needed to check a Dockerfile against the code: its base image must be pinned,
it must run as a non-root user, install every package its entry module imports (at the version
the lock pins) and copy every repository file that module reaches.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from deploy.imports import REPO_ROOT, closure, normalise

# Image basename (the last part of its repository name) -> Dockerfile, relative to the root.
DOCKERFILES = {
    "gateway": "services/gateway/Dockerfile",
    "retrieval": "services/retrieval/Dockerfile",
    "ranking": "services/ranking/Dockerfile",
    "reranking": "services/reranking/Dockerfile",
    "events": "services/events/Dockerfile",
    "training": "training/Dockerfile",
}


@dataclass
class Dockerfile:
    path: Path
    base_images: list[str] = field(default_factory=list)
    user: str = ""
    entry_module: str = ""
    packages: list[str] = field(default_factory=list)
    copied: list[str] = field(default_factory=list)  # repository paths copied into the final image
    exposed: list[int] = field(default_factory=list)


def image_basename(image: str) -> str:
    """`registry.example.com/funnel/retrieval:0.1.0` -> `retrieval`."""
    return image.rsplit("/", 1)[-1].split("@")[0].split(":")[0]


def parse(path: Path) -> Dockerfile:
    """The facts the checks need, from a Dockerfile written in this repository's style."""
    text = re.sub(r"\\\n", " ", path.read_text())
    args: dict[str, str] = {}
    parsed = Dockerfile(path)
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            args[name.strip()] = value.strip()
        elif instruction == "FROM":
            image = rest.split()[0]
            parsed.base_images.append(re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), image))
            parsed.copied = []  # only the last stage's copies end up in the image
        elif instruction == "USER":
            parsed.user = rest.strip()
        elif instruction == "ENTRYPOINT":
            words = _exec_form(rest)
            if len(words) >= 3 and words[1] == "-m":
                parsed.entry_module = words[2]
        elif instruction == "EXPOSE":
            parsed.exposed = [int(port) for port in rest.split()]
        elif instruction == "COPY" and "--from=" not in rest:
            parsed.copied.extend(rest.split()[:-1])
        elif instruction == "RUN" and "pip install -c requirements.lock" in rest and "/opt/venv/" in rest:
            words = shlex.split(rest.split("pip install", 1)[1])
            parsed.packages = [
                w for w in words if not w.startswith("-") and w != "requirements.lock" and "://" not in w
            ]
    return parsed


def _exec_form(rest: str) -> list[str]:
    return re.findall(r'"([^"]*)"', rest)


def locked_versions(lock: Path = REPO_ROOT / "requirements.lock") -> dict[str, str]:
    versions = {}
    for line in lock.read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, _, version = line.partition("==")
            versions[normalise(name)] = version.strip()
    return versions


def check(dockerfile: Dockerfile, root: Path = REPO_ROOT) -> list[str]:
    """Every way this Dockerfile cannot run its service, as readable problems (empty when sound)."""
    name = dockerfile.path.relative_to(root)
    problems = []
    for image in dockerfile.base_images:
        if not _pinned(image):
            problems.append(f"{name}: base image {image!r} is not pinned to a full version or digest")
    uid = dockerfile.user.split(":")[0]
    if not uid or uid in ("0", "root") or not uid.isdigit():
        problems.append(f"{name}: must end with a numeric non-root USER, has {dockerfile.user!r}")
    if len(dockerfile.base_images) < 2:
        problems.append(f"{name}: must be multi-stage (build tools stay out of the final image)")
    if not dockerfile.entry_module:
        problems.append(f"{name}: ENTRYPOINT must be python -m <module>")
        return problems

    locked = locked_versions(root / "requirements.lock")
    installed = {normalise(p) for p in dockerfile.packages}
    for package in sorted(installed - set(locked)):
        problems.append(f"{name}: installs {package!r}, which requirements.lock does not pin")
    needed = closure(dockerfile.entry_module, root)
    for distribution in sorted(needed.distributions - installed):
        problems.append(f"{name}: {dockerfile.entry_module} imports {distribution!r} but the image does not install it")
    copied = [root / c for c in dockerfile.copied]
    for source in copied:
        if not source.exists():
            problems.append(f"{name}: copies {source.relative_to(root)}, which does not exist")
    for file in sorted(needed.files):
        if file.relative_to(root).parts[:2] in (("funnel", "v1"), ("funnel", "v2")):
            continue  # generated in the build stage
        if not any(file == source or source in file.parents for source in copied):
            problems.append(f"{name}: {dockerfile.entry_module} needs {file.relative_to(root)}, which is not copied")
    return problems


def _pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
    return bool(re.match(r"^\d+\.\d+(\.\d+)?", tag))
