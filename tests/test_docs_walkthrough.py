"""The examples of README.md and docs/*.md, run for real, so that the docs cannot drift.

Runnable examples are marked with an HTML comment on the line before a fenced block:

- `<!-- doc-test: serve -->`: a bash block with the `chatauthz serve` command, then a plain block
  with what it prints. The test starts that server itself, once for every example: on a free
  127.0.0.1 port, with no CHATAUTHZ_* variable (so it generates its key), in a temporary folder
  that stands for the checkout (`data/` is created there; `docs` is linked into it). Its two
  stdout lines are compared with the block.
- `<!-- doc-test: http -->`: a bash block, run line by line with bash and curl in that folder.
  Lines that start with `j ` or `curl ` are requests; every other line is setup (variables, the
  `j` helper), kept for the later lines and blocks. The ```json block right after it holds one
  answer per request, in order. A trailing `# 503` comment is the expected HTTP status; without
  one the status must be 2xx.
- `<!-- doc-test: cli -->`: a plain block of `$ command` lines, each followed by its output.
- `<!-- doc-test: append PATH -->`, `<!-- doc-test: write PATH -->`: YAML written into a scratch
  copy of `policies/` (and model.conf); `<!-- doc-test: check-passes -->`, `check-problems` and
  `check-fails-without-createGroup-deny` show what `chatauthz check policies` prints on that copy,
  as is or after the edits that the prose before the block describes (the test makes exactly
  those edits, see POLICY_EDITS).

Blocks run in this order against the one server: README.md, docs/walkthrough.md, then the other
docs/*.md by name. `127.0.0.1:8787` in a command becomes the test server's address, and
`.venv/bin/chatauthz` or `chatauthz` the chatauthz of this interpreter's environment.

Normalisation. An HTTP answer in the docs is JSON in which `,…` marks trimmed fields and a value
"…" stands for any value. The keys the doc shows are compared recursively and keys it leaves out
are ignored, except in a decision (an object with `allowed`), whose stable fields `allowed`,
`code`, `reason`, `layer`, `role` and `scope` must each be equal or absent on both sides. The
values of VOLATILE keys (decisionId, revision, token, policyHash, timestamps, staleness) vary
from run to run and are only required to be present. In error messages, store epochs and numbers
(revisions) are masked. CLI output is compared line by line after masking policy hashes and the
folder in `policy files OK: <folder>` and `state in <folder>`; of `chatauthz authorize --explain`
only the first (decision) line is compared, as the explanation's format may still change, and of
a failing suite the `explanation:` line is skipped for the same reason.

Besides, every `chatauthz ...` command shown in any fenced block must parse (flags and values,
through the real argument parser, with the command's action stubbed out), every CHATAUTHZ_*
variable named must be a setting, the configuration table must list exactly the settings with
their real flags, and every relative link (and its #anchor) must point to something that exists.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pytest
from conftest import Server

from sidecar import cli
from sidecar.config import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "docs" / "walkthrough.md",
        *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "walkthrough.md")]
CHATAUTHZ = str(Path(sys.executable).with_name("chatauthz"))
DOC_PORT = "127.0.0.1:8787"
ANY = "…"
VOLATILE = {"decisionId", "revision", "token", "policyHash", "createdAt", "updatedAt", "stalenessSeconds", "at"}
DECISION = ("allowed", "code", "reason", "layer", "role", "scope")
SUBCOMMANDS = {"serve", "check", "authorize", "export", "healthcheck"}
TEST_COMMAND = "python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]' && .venv/bin/python -m pytest -q"
STATUS_MARK = "@@status="
END_MARK = "@@end-of-request@@"
CLI_TIMEOUT_S = 60


@dataclass
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    marker: str | None  # the doc-test marker before it, if any
    next: Block | None = None  # the block right after it (blank lines between at most)

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of a markdown file, each with its marker and its follower."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    ends: list[int] = []
    i = 0
    while i < len(lines):
        opening = re.match(r"^```(\S*)\s*$", lines[i])
        if not opening:
            i += 1
            continue
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        before = i - 1
        marker = re.match(r"^<!-- doc-test: (.+?) -->$", lines[before]) if before >= 0 else None
        found.append(Block(path, i + 1, opening.group(1), "\n".join(lines[i + 1:j]) + "\n",
                           marker.group(1) if marker else None))
        ends.append(j)
        i = j + 1
    for k in range(len(found) - 1):
        between = lines[ends[k] + 1:found[k + 1].line - 1]
        if all(not line.strip() for line in between):
            found[k].next = found[k + 1]
    return found


def logical_lines(text: str) -> list[str]:
    """Lines with `\\` continuations joined."""
    out: list[str] = []
    pending = ""
    for line in text.splitlines():
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        out.append(pending + line)
        pending = ""
    if pending:
        out.append(pending)
    return out


# -- comparing answers -------------------------------------------------------------------------

def mask_message(text: str) -> str:
    text = re.sub(r"\bs?[0-9a-f]{30,32}\b", "<epoch>", text)
    return re.sub(r"\d+(\.\d+)?", "<n>", text)


def mismatches(expected: Any, actual: Any, path: str = "") -> list[str]:
    """How `actual` (the server's) differs from `expected` (the doc's), by the rules above."""
    if expected == ANY:
        return []
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{path or '.'}: the doc shows an object, the server sends {actual!r}"]
        keys = list(expected) + [k for k in DECISION if "allowed" in expected and k not in expected]
        problems: list[str] = []
        for key in keys:
            where = f"{path}.{key}"
            if key not in expected:
                if key in actual:
                    problems.append(f"{where}: the doc shows none, the server sends {actual[key]!r}")
            elif key not in actual:
                problems.append(f"{where}: the doc shows {expected[key]!r}, the server sends none")
            elif key not in VOLATILE:
                problems += mismatches(expected[key], actual[key], where)
        return problems
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return [f"{path}: the doc shows {expected!r}, the server sends {actual!r}"]
        return [p for k, (e, a) in enumerate(zip(expected, actual, strict=True)) for p in mismatches(e, a, f"{path}[{k}]")]
    if path.endswith(".message") and isinstance(expected, str) and isinstance(actual, str):
        if mask_message(expected) == mask_message(actual):
            return []
    return [] if expected == actual else [f"{path}: the doc shows {expected!r}, the server sends {actual!r}"]


def doc_answer(line: str) -> Any:
    return json.loads(line.replace(",…", ""))


def mask_cli(line: str) -> str:
    line = re.sub(r"\(hash [0-9a-f]{16}\)", "(hash <hash>)", line)
    line = re.sub(r"^policy files OK: \S+", "policy files OK: <folder>", line)
    return re.sub(r"state in \S+\)", "state in <folder>)", line)


# -- the live server ---------------------------------------------------------------------------

@dataclass
class Site:
    folder: Path
    server: Server
    prelude: list[str]

    def bash(self, script: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHATAUTHZ_")}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        return subprocess.run(["bash", "-c", script], cwd=self.folder, env=env, capture_output=True,
                              text=True, timeout=CLI_TIMEOUT_S, check=False)


def localise(command: str, port: int) -> str:
    command = command.replace(DOC_PORT, f"127.0.0.1:{port}")
    return re.sub(r"(^|[\s;&|(])(?:\.venv/bin/)?chatauthz(?=\s)", lambda m: m.group(1) + shlex.quote(CHATAUTHZ), command)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    folder = tmp_path_factory.mktemp("checkout")
    (folder / "docs").symlink_to(ROOT / "docs")
    server = Server(Path("data"), api_key=None, log_dir=folder)  # data/ relative to the folder, as in the docs
    server.start()
    try:
        yield Site(folder, server, [])
    finally:
        server.stop()


def run_serve(site: Site, block: Block) -> list[str]:
    assert block.next is not None, f"{block.where}: the serve command needs its output block after it"
    shown = [mask_cli(line) for line in block.next.text.splitlines() if line.strip()]
    printed = [mask_cli(line) for line in site.server.stdout().splitlines() if line.strip()]
    printed = [line.replace(f"127.0.0.1:{site.server.port}", DOC_PORT) for line in printed]
    return [] if shown == printed else [f"{block.next.where}: the doc shows {shown}, `serve` printed {printed}"]


def run_http(site: Site, block: Block) -> list[str]:
    port = site.server.port
    requests: list[str] = []
    answers: list[str] = []
    follower = block.next
    for line in logical_lines(block.text):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if re.match(r"^(j|curl)\s", line):
            requests.append(line)
        else:
            site.prelude.append(localise(line, port))
    if follower is not None and follower.lang == "json":
        answers = [line for line in follower.text.splitlines() if line.strip()]
    if follower is not None and answers and len(answers) != len(requests):
        return [f"{block.where}: {len(requests)} request(s) but {len(answers)} answer(s) in {follower.where}"]
    problems: list[str] = []
    if not requests:
        return problems
    wrapper = f"curl() {{ command curl -w '\\n{STATUS_MARK}%{{http_code}}' \"$@\"; }}"
    script = [*site.prelude, wrapper] + [f"{localise(r, port)}\necho '{END_MARK}'" for r in requests]
    done = site.bash("\n".join(script))  # one shell for the block: the requests run in order
    outputs = done.stdout.split(END_MARK + "\n")
    for k, request in enumerate(requests):
        output = outputs[k] if k < len(outputs) else ""
        found = re.search(rf"\n{re.escape(STATUS_MARK)}(\d+)", output)
        if found is None:
            problems.append(f"{block.where}: `{request}` failed ({done.returncode}): {output}{done.stderr}")
            continue
        status, body = int(found.group(1)), output[:found.start()]
        wanted = re.search(r"#\s*(\d{3})\s*$", request)
        if (int(wanted.group(1)) != status) if wanted else not 200 <= status < 300:
            problems.append(f"{block.where}: `{request}` answered {status}: {body}")
        if not answers:
            continue
        try:
            actual = json.loads(body)
        except ValueError:
            problems.append(f"{block.where}: `{request}` answered no JSON: {body!r}")
            continue
        where = follower.where if follower is not None else block.where
        problems += [f"{where} (answer {k + 1}) {p}" for p in mismatches(doc_answer(answers[k]), actual)]
    return problems


def cli_examples(block: Block) -> list[tuple[str, list[str]]]:
    """(command, the output lines shown) for each `$ command` of a block."""
    examples: list[tuple[str, list[str]]] = []
    for line in logical_lines(block.text):
        if line.startswith("$ "):
            examples.append((line[2:].split("  #")[0].strip(), []))
        elif examples:
            examples[-1][1].append(line)
    return [(command, _trim(shown)) for command, shown in examples]


def _trim(lines: list[str]) -> list[str]:
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return lines


def run_cli(folder: Path, block: Block, *, port: int = 0, exit_code: int | None = None,
            skip: str | None = None) -> list[str]:
    problems = []
    examples = cli_examples(block)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATAUTHZ_")}

    def run(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-c", localise(command, port)], cwd=folder, capture_output=True, text=True,
                              timeout=CLI_TIMEOUT_S, check=False, env=env)
    with ThreadPoolExecutor(max_workers=4) as pool:  # the commands of one block only read: side by side
        results = list(pool.map(run, [command for command, _ in examples]))
    for (command, shown), done in zip(examples, results, strict=True):
        printed = _trim((done.stdout + done.stderr).splitlines())
        if exit_code is not None and done.returncode != exit_code:
            problems.append(f"{block.where}: `{command}` exited {done.returncode}, not {exit_code}: {printed}")
        if " authorize " in f" {command} " and "--explain" in command:
            shown, printed = shown[:1], printed[:1]  # the explanation's format may change: the decision only
        if skip:
            shown = [line for line in shown if not line.startswith(skip)]
            printed = [line for line in printed if not line.startswith(skip)]
        if [mask_cli(x) for x in shown] != [mask_cli(x) for x in printed]:
            problems.append(f"{block.where}: `{command}`\n  the doc shows:\n    " + "\n    ".join(shown)
                            + "\n  it printed:\n    " + "\n    ".join(printed))
    return problems


def all_blocks() -> list[Block]:
    return [b for path in DOCS for b in blocks(path)]


def test_walkthrough_against_a_live_server(site: Site) -> None:
    problems: list[str] = []
    ran = {"serve": 0, "http": 0, "cli": 0}
    for block in all_blocks():
        if block.marker == "serve":
            problems += run_serve(site, block)
        elif block.marker == "http":
            problems += run_http(site, block)
        elif block.marker == "cli":
            problems += run_cli(site.folder, block, port=site.server.port)
        else:
            continue
        ran[block.marker] += 1
    assert all(ran.values()), f"no examples of some kind were found: {ran}"
    assert not problems, "the docs differ from the server:\n" + "\n".join(problems)


# -- the policy guide's examples, on a scratch copy of the policies ------------------------------

# What the prose before each check block says was changed (file, text, replacement).
POLICY_EDITS = {
    "check-problems": [
        ("policies/catalogue.yaml", "createCall: {actions: [initiateCall]", "createCall: {actions: [startCall]"),
        ("policies/roles.yaml", "      createGroup: deny\n      blockUser: deny", "      createGroup: maybe\n      blockUser: deny"),
        ("policies/roles.yaml", "restrictedFeatures: [u.joinGroup]", "restrictedFeatures: [u.teleport]"),
    ],
    "check-passes": [],
    "check-fails-without-createGroup-deny": [
        ("policies/roles.yaml", "  trainee:\n    name: Trainee agent\n    description: Reads everything, may not "
         "create or delete groups.\n    permissions:\n      createGroup: deny\n",
         "  trainee:\n    name: Trainee agent\n    description: Reads everything, may not create or delete "
         "groups.\n    permissions:\n"),
    ],
}
CHECK_EXIT = {"check-problems": 3, "check-passes": 0, "check-fails-without-createGroup-deny": 4}


def scratch_policies(folder: Path, writes: list[Block], edits: list[tuple[str, str, str]]) -> Path:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    shutil.copytree(ROOT / "policies", folder / "policies")
    shutil.copy(ROOT / "model.conf", folder / "model.conf")
    for block in writes:
        mode, name = block.marker.split(" ", 1)  # type: ignore[union-attr]
        with open(folder / name, "a" if mode == "append" else "w", encoding="utf-8") as out:
            out.write(block.text)
    for name, old, new in edits:
        text = (folder / name).read_text(encoding="utf-8")
        assert old in text, f"POLICY_EDITS: {old!r} is not in {name} any more"
        (folder / name).write_text(text.replace(old, new, 1), encoding="utf-8")
    return folder


def test_policy_guide_examples(tmp_path: Path) -> None:
    guide = blocks(ROOT / "docs" / "policies.md")
    writes = [b for b in guide if b.marker and b.marker.split(" ")[0] in ("append", "write")]
    checks = [b for b in guide if b.marker in POLICY_EDITS]
    assert writes and {b.marker for b in checks} == set(POLICY_EDITS)
    def run(block: Block) -> list[str]:
        assert block.marker is not None
        folder = scratch_policies(tmp_path / block.marker, [] if block.marker == "check-problems" else writes,
                                  POLICY_EDITS[block.marker])
        return run_cli(folder, block, exit_code=CHECK_EXIT[block.marker], skip="    explanation:")
    with ThreadPoolExecutor(max_workers=len(checks)) as pool:
        problems = [p for found in pool.map(run, checks) for p in found]
    assert not problems, "the policy guide differs from `chatauthz check`:\n" + "\n".join(problems)


# -- every command parses, every setting and link exists ------------------------------------------

def shown_commands() -> list[tuple[Block, dict[str, str], list[str]]]:
    """(block, environment assignments, argv after `chatauthz`) of every command in a fenced block."""
    found = []
    for block in all_blocks():
        for line in logical_lines(block.text):
            line = line[2:] if line.startswith("$ ") else line
            try:
                tokens = shlex.split(line, comments=True)
            except ValueError:
                continue
            for start, token in enumerate(tokens):
                if re.fullmatch(r"(\S*/)?chatauthz", token) and tokens[start + 1:start + 2] and tokens[start + 1] in SUBCOMMANDS:
                    env = dict(t.split("=", 1) for t in tokens[:start] if re.fullmatch(r"[A-Z_]+=.*", t))
                    argv = tokens[start + 1:]
                    for stop in ("&&", "||", "|", ";"):
                        argv = argv[:argv.index(stop)] if stop in argv else argv
                    found.append((block, env, argv))
    return found


def test_every_cli_command_shown_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    commands = shown_commands()
    assert {argv[0] for _, _, argv in commands} == SUBCOMMANDS, "every subcommand is shown at least once"
    parse = argparse.ArgumentParser.parse_args
    def parse_only(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> argparse.Namespace:
        namespace: argparse.Namespace = parse(self, *args, **kwargs)
        if hasattr(namespace, "run"):
            namespace.run = lambda _args: 0
        return namespace

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_only)
    monkeypatch.setattr(cli, "serve_forever", lambda settings: 0)  # serve: flags -> Settings, validated
    problems = []
    for block, env, argv in commands:
        for name in [n for n in os.environ if n.startswith("CHATAUTHZ_")]:
            monkeypatch.delenv(name)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        try:
            code = cli.main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
        if code != 0:
            problems.append(f"{block.where}: `chatauthz {shlex.join(argv)}` does not parse (exit {code})")
    assert not problems, "\n".join(problems)


def doc_text() -> Iterator[tuple[Path, str]]:
    for path in DOCS:
        yield path, path.read_text(encoding="utf-8")


def test_every_variable_named_is_a_setting() -> None:
    settings = {"CHATAUTHZ_" + f.name.upper() for f in fields(Settings)}
    named = {(path.relative_to(ROOT), v) for path, text in doc_text() for v in re.findall(r"CHATAUTHZ_[A-Z_]+", text)}
    assert named, "no variable found"
    unknown = sorted(f"{path}: {name}" for path, name in named if name not in settings)
    assert not unknown, "variables that are no setting:\n" + "\n".join(unknown)


def test_configuration_table_lists_every_setting_with_its_flag() -> None:
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `([a-z_]+)` \| (`--[a-z-]+`|—) \| `(CHATAUTHZ_[A-Z_]+)` \|", text, re.M)
    assert {name for name, _, _ in rows} == {f.name for f in fields(Settings)}
    serve_help = subprocess.run([CHATAUTHZ, "serve", "--help"], capture_output=True, text=True, check=True).stdout
    flags = set(re.findall(r"(--[a-z-]+)", serve_help)) - {"--help"}
    shown = {flag.strip("`") for _, flag, _ in rows if flag != "—"}
    assert shown == flags, f"flags in the table but not in `serve --help`: {shown - flags}; missing: {flags - shown}"
    assert all(variable == "CHATAUTHZ_" + name.upper() for name, _, variable in rows)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"(?ms)^```.*?^```", "", text)
    return {slug(m) for m in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def test_every_relative_link_exists() -> None:
    problems = []
    count = 0
    for path, text in doc_text():
        text = re.sub(r"(?ms)^```.*?^```", "", text)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+:", target):
                continue
            count += 1
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.exists():
                problems.append(f"{path.relative_to(ROOT)}: {target}: no such file")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                problems.append(f"{path.relative_to(ROOT)}: {target}: no heading #{anchor} there")
    assert count > 20
    assert not problems, "\n".join(problems)


def test_readme_keeps_the_test_command_and_its_size() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert TEST_COMMAND in readme.splitlines(), "CI (.ci/run) runs the README's test command"
    assert len(readme.splitlines()) <= 250


def test_a_drifted_reason_is_caught() -> None:
    """The comparison itself: a reason that differs by one word is reported; volatile fields are not."""
    doc = ('{"data":{"allowed":true,"reason":"allowed: role \'default\' allows sendMessage (from catalogue)",'
           '"layer":"role","role":"default",…}}')
    server = {"data": {"allowed": True, "reason": "allowed: role 'default' allows sendMessage (from catalogue)",
                       "layer": "role", "role": "default", "revision": 7, "decisionId": "x-1", "token": "s1:7"}}
    assert mismatches(doc_answer(doc), server) == []
    drifted = json.loads(json.dumps(server))
    drifted["data"]["reason"] = "allowed: role 'default' allows sendMessage (from roles.yaml)"
    assert mismatches(doc_answer(doc), drifted) == [
        ".data.reason: the doc shows \"allowed: role 'default' allows sendMessage (from catalogue)\", "
        "the server sends \"allowed: role 'default' allows sendMessage (from roles.yaml)\""]
    drifted["data"]["scope"] = "participant"  # a decision field the doc does not show
    assert any(p.startswith(".data.scope") for p in mismatches(doc_answer(doc), drifted))
