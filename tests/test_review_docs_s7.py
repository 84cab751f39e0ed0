"""The documentation against the code: every `upsample ...` command and option that README.md
and docs/ show exists in the CLI, every package module is named in README's layout table, and
every environment variable the package reads is documented."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from upsample import cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def code_segments(text: str) -> list[str]:
    """Inline code spans and the lines of fenced code blocks: where commands are shown."""
    blocks = re.findall(r"```.*?```", text, re.S)
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    lines = [line.split(" #")[0] for block in blocks for line in block.splitlines()]  # not comments
    return lines + re.findall(r"`([^`\n]+)`", prose)


def leaf_options() -> dict[str, set[str]]:
    """'eval' / 'data prepare' -> the option strings its parser takes (old spellings too)."""
    found: dict[str, set[str]] = {}

    def walk(parser: argparse.ArgumentParser, name: str) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        found[name] = {s for a in parser._actions for s in a.option_strings}
        for action in subs:
            for sub_name, sub in action.choices.items():
                walk(sub, f"{name} {sub_name}".strip())

    walk(cli.build_parser(), "")
    return found


def documented_calls():
    """(file, command, options) for every `upsample COMMAND ...` shown in the docs."""
    for doc in DOCS:
        for segment in code_segments(doc.read_text()):
            for m in re.finditer(r"(?<![\w.-])upsample ([a-z][\w-]*)((?: [a-z]+)?)([^\n;]*)", segment):
                command, word, rest = m.group(1), m.group(2).strip(), m.group(3)
                if command == "data" and word in ("prepare", "check", "clean", "split"):
                    command = f"data {word}"
                yield doc.relative_to(ROOT), command, re.findall(r"(?<![\w-])--[a-z0-9][a-z0-9-]*", rest)


def test_documented_commands_and_options_exist():
    options = leaf_options()
    wrong = []
    for doc, command, named in documented_calls():
        if command not in options:
            wrong.append(f"{doc}: upsample {command}: no such command")
            continue
        wrong += [f"{doc}: upsample {command} {o}: no such option" for o in named if o not in options[command]]
    assert not wrong, "\n".join(sorted(set(wrong)))


def layout_rows() -> dict[str, str]:
    """README's layout table: 'training/' -> the text of its row (a row may hold two packages)."""
    text = (ROOT / "README.md").read_text().split("## Layout", 1)[1]
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) == 2:
            for package in re.findall(r"`(\w+)/`", cells[0]):
                rows[package] = cells[1]
    return rows


def test_layout_table_names_every_module():
    rows = layout_rows()
    missing = []
    for package in sorted(p for p in (ROOT / "src" / "upsample").iterdir() if (p / "__init__.py").exists()):
        if package.name not in rows or package.name == "cli":
            continue  # assets, weights: data, not code; cli: "one module per sub-command"
        for module in sorted(package.glob("*.py")):
            if module.stem != "__init__" and not re.search(rf"`{module.stem}(\.py)?`", rows[package.name]):
                missing.append(f"{package.name}/{module.name}")
    assert not missing, f"README's layout table does not name: {missing}"


def test_environment_variables_read_are_documented():
    source = "\n".join(p.read_text() for p in (ROOT / "src" / "upsample").rglob("*.py"))
    names = set(re.findall(r"[\"'](UPSAMPLE_[A-Z_]+)[\"']", source))
    readme = (ROOT / "README.md").read_text()
    assert names, "no UPSAMPLE_* variable found: the pattern is stale"
    assert not sorted(n for n in names if n not in readme), "undocumented in README.md"


def test_documented_bench_calls_name_what_to_time():
    """`upsample bench` without --model or --train stops with an error, so a command shown with
    options names one of them (docs/training.md's GPU row had neither)."""
    bare = [f"{doc}: upsample bench {' '.join(named)}" for doc, command, named in documented_calls()
            if command == "bench" and named and not {"--model", "--train"} & set(named)]
    assert not bare, "\n".join(bare)
