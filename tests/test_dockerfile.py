"""The Dockerfile, read as Docker reads it (no Docker engine here): a rebuilt image ships its own
policies, so no VOLUME may cover /app/policies (an old volume would hide the new image's files)."""
from __future__ import annotations

import json
import re
from pathlib import PurePosixPath

from conftest import PROJECT_DIR

POLICIES = PurePosixPath("/app/policies")


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile: comments dropped, continuation lines joined."""
    text = (PROJECT_DIR / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\s*\n", " ", "\n".join(lines))
    result = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def volumes() -> list[PurePosixPath]:
    paths: list[str] = []
    for word, rest in instructions():
        if word == "VOLUME":
            paths += json.loads(rest) if rest.startswith("[") else rest.split()
    return [PurePosixPath(p) for p in paths]


def test_no_volume_covers_the_policies() -> None:
    covering = [v for v in volumes() if v == POLICIES or v in POLICIES.parents]
    assert covering == [], f"VOLUME {covering} hides the policies of a newly built image behind an old volume"


def test_the_image_ships_its_policies_and_keeps_data_in_a_volume() -> None:
    steps = instructions()
    assert ("COPY", "policies ./policies") in steps and ("WORKDIR", "/app") in steps
    env = " ".join(rest for word, rest in steps if word == "ENV")
    assert f"CHATAUTHZ_POLICIES={POLICIES}" in env
    assert PurePosixPath("/data") in volumes()
