"""Every Python and shell example in README.md and docs/*.md, run as written.

A small collector of our own rather than pytest-codeblocks or pytest-markdown-docs: those run a Python block in
the test's own folder (ours write `out/...`, which must not land in the checkout), neither appends a small budget
to a long command, and only pytest-codeblocks runs shell blocks at all. Here each page runs in an empty folder
that, like a clone, has `docs/` beside it and `../shared` above it; its blocks run in page order (a shell block
may read a file an earlier one wrote), every Python block in fresh globals (a block that leans on another's
names or imports fails), every `softhard` command in-process through the console script's `main` (saving an
interpreter start each). What a long example costs is cut only through what a user sets too: Python blocks read
`SOFTHARD_DOCS_SMALL` (set here) and pick a few rows and steps, and a long command gets `BUDGETS`' options
appended (the last value of an option wins). An example whose own settings make the package log a warning
fails. A block marked `<!-- docs-test: skip, why -->` on the line above is
not run; a fenced block marked `<!-- docs-test: expected output -->` is what the block before it prints.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import logging
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from peft_softhard.app.cli import main as softhard_main

from conftest import REPO, SHARED, TINY_DEMO

pytestmark = pytest.mark.integration  # most pages run the real SmolLM2

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
RUN_LANGUAGES = ("python", "bash")
FENCE = re.compile(r"^```(?P<info>[^\n`]*)\n(?P<body>.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
MARK = re.compile(r"<!--\s*docs-test:\s*(?P<what>[^,>]*?)\s*(?:,\s*(?P<why>.*?))?\s*-->")

ROWS = ["--max-train", "8", "--validation-rows", "4", "--max-eval", "4"]
# The smallest budget that runs the same code, appended to a long command (by subcommand; a corpus command has
# no task rows). The demo's and discover's search budgets are the install test's (TINY_DEMO).
BUDGETS = {
    "train": [*ROWS, "--steps", "1", "--batch-size", "4", "--eval-interval", "1"],
    "discover": [*ROWS, *TINY_DEMO[TINY_DEMO.index("--steps"):], "--candidates", "2"],
    "eval": ["--max-eval", "4"],
    "demo": ["--train-rows", "8", "--validation-rows", "4", "--eval-rows", "4", *TINY_DEMO],
}
CORPUS_BUDGETS = {"train": ["--steps", "1", "--batch-size", "4", "--eval-interval", "1"],
                  "discover": ["--steps", "1", "--batch-size", "4", "--eval-interval", "1"]}


@dataclass
class Block:
    page: Path
    line: int
    language: str
    code: str
    skip: str | None = None  # why it is not run
    expected_output: str | None = None

    @property
    def where(self) -> str:
        page = self.page.relative_to(REPO) if self.page.is_relative_to(REPO) else self.page.name
        return f"{page}:{self.line}"


def blocks_of(page: Path) -> list[Block]:
    """The runnable blocks of a Markdown page, in order, with their marks."""
    text = page.read_text(encoding="utf-8")
    blocks: list[Block] = []
    for fence in FENCE.finditer(text):
        line = text.count("\n", 0, fence.start()) + 1
        above = text[:fence.start()].rstrip("\n").rsplit("\n", 1)[-1]
        mark = MARK.search(above)
        if mark and mark["what"] == "expected output":
            assert blocks, f"{page.name}:{line}: an expected output with no block before it"
            blocks[-1].expected_output = fence["body"]
        elif fence["info"].strip() in RUN_LANGUAGES:
            skip = None
            if mark:
                assert mark["what"] == "skip" and mark["why"], f"{page.name}:{line}: say `docs-test: skip, why`"
                skip = mark["why"]
            blocks.append(Block(page, line, fence["info"].strip(), fence["body"], skip))
    return blocks


def shell_commands(code: str) -> list[str]:
    """A shell block's commands: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\s*\\\n\s*", " ", code)
    commands = []
    for line in joined.splitlines():
        command = re.split(r"(?:^|\s)#\s", line, maxsplit=1)[0].strip()
        if command:
            commands.append(command)
    return commands


def with_budget(argv: list[str]) -> list[str]:
    """`argv` (a `softhard` command's arguments) with the smallest budget for its subcommand appended (and one
    generated sample where it asks for some)."""
    budgets = CORPUS_BUDGETS if "--corpus" in argv else BUDGETS
    return [*argv, *budgets.get(argv[0], []), *(["--sample", "1"] if "--sample" in argv else [])]


@contextlib.contextmanager
def no_warnings_from_us(what: str):
    """Fails if the package logs a warning inside: a documented example's own settings should not draw one."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    package = logging.getLogger("peft_softhard")
    package.addHandler(handler)
    try:
        yield
    finally:
        package.removeHandler(handler)
    assert not records, f"{what} draws warnings: {[record.getMessage() for record in records]}"


def run_python(block: Block) -> tuple[str, dict]:
    """What a Python block prints, and the names it left."""
    printed, names = io.StringIO(), {"__name__": "__main__"}
    with contextlib.redirect_stdout(printed), no_warnings_from_us(block.where):
        exec(compile(block.code, block.where, "exec"), names)  # noqa: S102 - our own docs
    return printed.getvalue(), names


def run_shell(block: Block, environment: dict) -> str:
    """A shell block: a heredoc runs whole in bash; otherwise each command, `softhard` ones in-process."""
    if "<<" in block.code:
        return bash(block.code, block, environment)
    printed = []
    for command in shell_commands(block.code):
        words = shlex.split(command)
        if Path(words[0]).name == "softhard":
            printed.append(run_softhard(with_budget(words[1:]), block.where))
        else:  # under a launcher: `-m peft_softhard SUBCOMMAND ...` gets the same budget
            if "peft_softhard" in words:
                at = words.index("peft_softhard") + 1
                words = [*words[:at], *with_budget(words[at:])]
            printed.append(bash(shlex.join(words), block, environment))
    return "".join(printed)


def run_softhard(argv: list[str], where: str) -> str:
    """What `softhard ARGV` prints, run in-process through the console script's `main` (it must succeed)."""
    out, err = io.StringIO(), io.StringIO()
    command = f"softhard {shlex.join(argv)}"
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), no_warnings_from_us(command):
        code = softhard_main(argv)
    assert code == 0, f"{where}: `{command}` failed:\n{err.getvalue()[-3000:]}"
    return out.getvalue()


def bash(script: str, block: Block, environment: dict) -> str:
    result = subprocess.run(["bash", "-e", "-c", script], capture_output=True, text=True, env=environment,
                            timeout=600)
    assert result.returncode == 0, f"{block.where} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def documented_pages() -> list[Path]:
    return [page for page in PAGES if any(block.skip is None for block in blocks_of(page))]


def enter_checkout(tmp_path: Path, monkeypatch) -> dict:
    """Work where the examples expect to: a clone's root (`docs/` in it, `../shared` beside it), with the small
    budgets on. Returns the environment for shell commands."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / "docs").symlink_to(REPO / "docs")
    (tmp_path / "shared").symlink_to(SHARED)
    monkeypatch.chdir(checkout)
    monkeypatch.setenv("SOFTHARD_DOCS_SMALL", "1")
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


@pytest.mark.parametrize("page", documented_pages(), ids=lambda page: page.name)
def test_every_example_on_the_page_runs_as_written(page, tmp_path, monkeypatch):
    environment = enter_checkout(tmp_path, monkeypatch)
    for block in blocks_of(page):
        if block.skip:
            continue
        started = time.time()
        printed = run_python(block)[0] if block.language == "python" else run_shell(block, environment)
        if block.expected_output is not None:
            assert printed.rstrip() == block.expected_output.rstrip(), f"{block.where} printed something else"
        print(f"{block.where}: {time.time() - started:.1f} s")


def test_the_quickstart_python_reproduces_the_demo(tmp_path, monkeypatch):
    """docs/quickstart.md's Python and its `softhard demo`, on the same few rows: the same prompts, the same
    scores (both pages' blocks are marked for this test)."""
    from dataclasses import replace

    from peft_softhard import DiscoveryConfig
    from peft_softhard.app.cli import parse_args
    from peft_softhard.app.demo import DemoConfig
    from peft_softhard.app.options import config_from_args

    enter_checkout(tmp_path, monkeypatch)
    blocks = blocks_of(REPO / "docs" / "quickstart.md")
    (python,) = [block for block in blocks if block.language == "python"]
    (demo,) = [block for block in blocks if shell_commands(block.code) == ["softhard demo"]]
    _, names = run_python(python)
    argv = [*with_budget(shlex.split(shell_commands(demo.code)[0])[1:]), "--json"]
    options = parse_args(argv)
    assert config_from_args(DemoConfig, options) == names["settings"]  # the page's small budget is the test's
    assert config_from_args(DiscoveryConfig, options, seed=0, show_progress=False) == replace(names["search"],
                                                                                            show_progress=False)
    report = json.loads(run_softhard(argv, demo.where))
    for prompt in ("manual", "soft", "hard", "reading"):
        assert report[prompt]["accuracy"] == names["scores"][prompt]["accuracy"], prompt
        assert report[prompt]["macro_f1"] == names["scores"][prompt]["macro_f1"], prompt
    assert report["hard_prompt"] == names["found"].filled(names["tokenizer"])
    assert report["hard_label_words"] == names["found"].label_words
    assert (report["soft_step"], report["soft_reading"]) == (names["trained"].best_step, names["reading"].text)


def test_every_name_a_python_block_imports_is_used():
    """With the page test, this is what makes deleting any import from a block fail the suite: each imported name
    is used in its block, so the block then stops with a NameError."""
    for page in PAGES:
        for block in blocks_of(page):
            if block.language != "python":
                continue
            tree = ast.parse(block.code)
            imported = {alias.asname or alias.name.split(".")[0] for node in ast.walk(tree)
                        if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names}
            used = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
            assert imported <= used, f"{block.where} imports {sorted(imported - used)} and never uses them"


def test_the_documented_signatures_are_the_functions_own():
    """python-api.md's headings that spell a call, `name(a, b=None) -> ...`, name the function's parameters in
    order."""
    import inspect

    import peft_softhard

    text = (REPO / "docs" / "python-api.md").read_text(encoding="utf-8")
    headings = [call for line in re.findall(r"^#+ .*$", text, re.MULTILINE)
                for call in re.findall(r"`(\w+)\(([^)`]*)\)", line)]
    assert len(headings) >= 7
    for name, arguments in headings:
        documented = [argument.split("=")[0].strip().lstrip("*") for argument in arguments.split(",")
                      if argument.strip() not in ("", "*")]
        actual = list(inspect.signature(getattr(peft_softhard, name)).parameters)
        assert documented == actual, f"python-api.md documents {name}({', '.join(documented)}): it takes {actual}"


def test_the_collector_finds_blocks_marks_and_outputs(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("Intro\n\n```python\nprint(1)\n```\n<!-- docs-test: expected output -->\n```\n1\n```\n\n"
                    "<!-- docs-test: skip, installs packages -->\n```bash\npip install x\n```\n```yaml\na: 1\n```\n"
                    "```bash\nsofthard train --task sst2 \\\n    --steps 200   # long\n\n# a comment\n```\n")
    first, skipped, command = blocks_of(page)
    assert (first.line, first.language, first.code, first.expected_output) == (3, "python", "print(1)\n", "1\n")
    assert skipped.skip == "installs packages" and command.skip is None
    assert shell_commands(command.code) == ["softhard train --task sst2 --steps 200"]
    assert with_budget(["train", "--task", "sst2", "--steps", "200"])[-len(BUDGETS["train"]):] == BUDGETS["train"]
    assert with_budget(["project", "--adapter", "a"]) == ["project", "--adapter", "a"]


def test_a_block_missing_an_import_fails(tmp_path):
    """What the page test relies on: a block does not see names another block (or this module) defined."""
    block = Block(tmp_path / "page.md", 1, "python", "config = SoftHardConfig(task_type='CAUSAL_LM')\n")
    with pytest.raises(NameError, match="SoftHardConfig"):
        run_python(block)
