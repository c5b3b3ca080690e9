"""The documents stay true: every `alexnet-tiny ...` command they show is accepted by the parser,
every link to a file of the repository resolves, and they speak of the tool, not of how it was made."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from alexnet_tiny import cli
from alexnet_tiny.config import PRESETS

from conftest import LEARNS_AT_ONCE_TOML, NARROW_ENV, run_cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", ROOT / "RESULTS.md", ROOT / "BENCHMARKS.md", ROOT / "CHANGELOG.md",
               *(ROOT / "docs").glob("*.md"), ROOT / "bench" / "README.md"])


def runnable(text: str) -> list[str]:
    """Lines of code blocks that run `alexnet-tiny` (continuation lines joined, comments dropped);
    synopses (with [optional] parts or a|b choices) are left out."""
    found = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split(" #")[0].split("&&"):
                part = part.strip()
                if part.startswith("alexnet-tiny") and "[" not in part and "|" not in part:
                    found.append(part)
    return found


def mentioned(text: str) -> list[str]:
    """`alexnet-tiny ...` in inline code: a command and some of its flags, not always all it needs."""
    return [c for c in re.findall(r"`(alexnet-tiny(?: [^`]*)?)`", text)
            if "[" not in c and "|" not in c and not re.match(r"alexnet-tiny [\w-]+:", c)]  # not its output


def documented(kind) -> list[tuple[str, str]]:
    return [(doc.relative_to(ROOT).as_posix(), c) for doc in DOCS for c in kind(doc.read_text())]


def subcommand_parsers() -> dict:
    ap = cli.build_parser()
    return next(a for a in ap._actions if a.__class__.__name__ == "_SubParsersAction").choices


def test_the_documents_show_commands():
    lines = documented(runnable)
    assert len(lines) >= 8 and ("README.md", "alexnet-tiny grid --preset quick") in lines


@pytest.mark.parametrize("doc, command", documented(runnable))
def test_every_documented_command_line_is_accepted(doc, command):
    try:
        cli.build_parser().parse_args(shlex.split(command)[1:])
    except SystemExit as e:
        assert e.code == 0, f"{doc}: `{command}` is not accepted by the parser"


@pytest.mark.parametrize("doc, command", documented(mentioned))
def test_every_mentioned_command_and_flag_exists(doc, command):
    words = shlex.split(command)[1:]
    if not words or words[0].startswith("-"):
        options = {o for a in cli.build_parser()._actions for o in a.option_strings}
        assert all(w in options for w in words), f"{doc}: `{command}`"  # alexnet-tiny --version and the like
        return
    parsers = subcommand_parsers()
    assert words[0] in parsers, f"{doc}: `{command}`: no command {words[0]}"
    options = {o for a in parsers[words[0]]._actions for o in a.option_strings}
    unknown = [w.split("=")[0] for w in words[1:] if w.startswith("-") and w.split("=")[0] not in options]
    assert unknown == [], f"{doc}: `{command}`: {words[0]} has no {', '.join(unknown)}"


def links(text: str) -> list[str]:
    return [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_link_resolves_to_a_file(doc):
    missing = [t for t in links(doc.read_text()) if not (doc.parent / t.split("#")[0]).exists()]
    assert missing == []


@pytest.mark.parametrize("doc", [*DOCS, *sorted((ROOT / "src").rglob("*.py")), *sorted((ROOT / "grids").glob("*.toml"))],
                         ids=lambda p: p.relative_to(ROOT).as_posix())
def test_documents_and_code_name_no_session_or_issue(doc):
    assert re.findall(r"\b(?:[Ss]ession|[Ii]ssue)s? \d+|\b[Tt]he issue\b|\b[Ii]ssue's", doc.read_text()) == []


def reference_sections() -> dict[str, str]:
    """docs/cli.md's section of each command: from its "## `alexnet-tiny COMMAND" heading to the next."""
    text = (ROOT / "docs" / "cli.md").read_text()
    parts = re.split(r"^## `alexnet-tiny (\w+)[^\n]*\n", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def test_the_command_line_reference_documents_every_command_and_flag():
    sections = reference_sections()
    assert sorted(sections) == sorted(subcommand_parsers())
    for command, parser in subcommand_parsers().items():
        for action in parser._actions:
            for flag in action.option_strings:
                if flag.startswith("--") and flag != "--help":
                    assert re.search(rf"{re.escape(flag)}\b", sections[command]), f"docs/cli.md: {command} {flag}"


# Python blocks run as written, but on the small test dataset (prepared already) instead of the embedded one.
ON_SMALL_DATA = {'prepare("data/tiny-image10")': "SMALL_DATA"}


def python_blocks() -> list[tuple[str, str]]:
    return [(doc.relative_to(ROOT).as_posix(), block) for doc in DOCS
            for block in re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)]


def test_the_api_page_has_python_to_run():
    assert [doc for doc, _ in python_blocks()].count("docs/api.md") >= 1


@pytest.mark.usefixtures("narrow_alexnet")
@pytest.mark.parametrize("doc, block", python_blocks())
def test_every_python_block_runs(doc, block, small_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for old, new in ON_SMALL_DATA.items():
        block = block.replace(old, new)
    exec(compile(block, doc, "exec"), {"SMALL_DATA": small_data})


# ----------------------------------------------------------------------------- output shown in the documents

TRIAL_NAME = re.compile(r"\b(?:%s)(?:_[\w.+-]+)?\b" % "|".join(sorted(map(re.escape, PRESETS), key=len, reverse=True)))


def output_shape(line: str) -> str:
    """A line of the tool's output with what changes from run to run taken out: paths, trial names,
    numbers and durations; what is left is the code's format."""
    line = re.sub(r"^grid \S+:", "grid PATH:", line)  # the grid folder of the summary line
    line = re.sub(r"(?<!\S)[^\s(]*[A-Za-z][^\s(]*/\S*", "PATH", line)
    line = TRIAL_NAME.sub("TRIAL", line)
    line = re.sub(r"\d+(?:\.\d+)?(?:e-?\d+)?", "N", line)
    return re.sub(r"N (?:h|min|s)(?: N (?:min|s))*", "DURATION", line)


def output_block(doc: Path, command: str) -> list[str]:
    """The lines of the output block a document shows under `<!-- output of: COMMAND -->`."""
    found = re.search(rf"<!-- output of: {re.escape(command)} -->\s*```[a-z]*\n(.*?)```", doc.read_text(), re.S)
    assert found, f"{doc.name}: no output block for `{command}`"
    return [line for line in found.group(1).splitlines() if line.strip()]


def test_output_shapes():
    assert output_shape("quick_lr0.016: stopped by ASHA at epoch 1: val 0.108 below the cutoff 0.249") == \
        output_shape("quick_lr1e-07_b32_e4: stopped by ASHA at epoch 3: val 0.5 below the cutoff 0.7")
    assert output_shape("estimated 6 min 10 s on cpu") == output_shape("estimated 57 s on cpu")
    assert output_shape("grid runs/quick: 3 trials (1 done, 2 stopped) in 229s") != \
        output_shape("grid runs/quick: 3 trials (3 done) in 229s")


ASHA_GRID = "preset = 'quick'\nlr = [0.004, 1e-7, 2e-7]\nepochs = 10\nbatch_size = 32\n" + LEARNS_AT_ONCE_TOML


README_JOB = "alexnet-tiny grid --preset quick"


@pytest.mark.slow
def test_the_readmes_sample_output_is_the_tools_output_today(small_data, tmp_path):
    """The main job's output in README.md, line by line, has the format of what the tool prints today:
    a grid of the same shape (three trials, ASHA at epochs 1, 3 and 9 with reduction factor 3, two
    stopped at epoch 1) on small data, compared with numbers, names and paths taken out. (Its report's
    lines: tests/test_report.py, against the report it writes anyway.)"""
    toml = tmp_path / "asha.toml"
    toml.write_text(ASHA_GRID)
    proc = run_cli("grid", "--config", toml, "--scheduler", "asha", "--reduction-factor", 3, "--data", small_data,
                   "--out", tmp_path / "grid", "-q", "--no-report", env=NARROW_ENV, check=True)
    printed = (proc.stderr + proc.stdout).replace(  # the README's run wrote its report; this one, to be short, not
        "; no report (--no-report)", f"; report {tmp_path / 'grid' / 'report' / 'index.html'}")
    produced = {output_shape(line) for line in printed.splitlines()}
    sample = [line for line in output_block(ROOT / "README.md", README_JOB) if not line.startswith("report: ")]
    assert len(sample) >= 5
    assert [line for line in sample if output_shape(line) not in produced] == []


def test_ci_runs_the_readmes_install_and_test_command_before_adding_ray():
    """CI's first run is a reader's: the README's own install (no extras it does not name) and exactly
    its test command; only then is Ray added, for the tests marked `ray` alone."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    install = re.search(r"pip install [^&\n]+", blocks[0]).group(0).strip()
    test_command = blocks[1].strip()
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.strip().startswith("#")]
    pips = [i for i, line in enumerate(ci) if line.startswith("pip install")]
    tests = [i for i, line in enumerate(ci) if "pytest" in line]
    assert ci[pips[0]].replace(" -q", "") == install
    assert ci[tests[0]] == test_command and pips[0] < tests[0] < pips[1] < tests[1]
    assert ".[test,ray]" in ci[pips[1]] and ci[tests[1]].endswith(f"{test_command} -m ray")


def test_the_report_page_documents_every_figure():
    """docs/report.md lists every file of the report's one list of figures (page.FIGURES)."""
    from alexnet_tiny.page import FIGURES
    text = (ROOT / "docs" / "report.md").read_text()
    assert [f for f, _ in FIGURES.values() if f"`{f}`" not in text] == []
