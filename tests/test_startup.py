"""Text commands start without torch: `upsample --help`, `upsample models` and `X --help` import
only what they print, and what they print (the model table, the command list, the choices) is
the same as the torch-side sources it was written down from."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from upsample import cli

# The commands whose module is torch-free at import (all of them).
LIGHT_HELP = ["bench", "eval", "video", "image", "data", "train", "prune", "tune", "quantize", "models", "interpolate", "export",
              "cache", "codec-study", "make-clip"]

PROBE = """
import contextlib, io, json, sys
from upsample.cli import main
heavy = {}
for argv in json.loads(sys.argv[1]):
    with contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            main(argv)
        except SystemExit:
            pass
    heavy[" ".join(argv)] = ["torch" in sys.modules, len(out.getvalue())]
print(json.dumps(heavy))
"""


def test_text_commands_import_no_torch():
    argvs = [["--help"], [], ["models"], ["models", "--json"], ["models", "--all"], ["nosuch"],
             *([name, "--help"] for name in LIGHT_HELP)]
    run = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argvs)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    heavy = json.loads(run.stdout)
    assert [k for k, (torch, _) in heavy.items() if torch] == []  # in order: the first one that did
    assert heavy["models"][1] > 500 and heavy["--help"][1] > 500  # and they printed their text


def test_model_table_matches_the_registry():
    """Each registered model built once (on the meta device) and counted: the rows written down
    in `models.table` are what the registry computes (else: python -m upsample.models.table)."""
    from upsample.models import registry, table
    assert table.ALIASES == table.aliases_from_registry()
    names = registry.list_models(None, aliases=True)
    assert table.names(None, aliases=True) == names
    assert table.names("generator", aliases=True) == registry.list_models("generator", aliases=True)
    for name in registry.list_models(None):
        spec, row = registry.get_spec(name), table.row(name)
        assert (row.pre_upsample, row.kind) == (spec.pre_upsample, spec.kind), name
        assert table.describe(name) == registry.describe(name), "rewrite ROWS: python -m upsample.models.table"
    for alias, target in table.ALIASES.items():
        assert table.describe(alias) == {**table.describe(target), "name": alias, "alias_of": target}


def full_subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub, dict(sub.choices)


def test_command_summaries_are_the_registered_ones():
    sub, parsers = full_subparsers()
    assert list(parsers) == list(cli.COMMANDS)
    assert {a.dest: a.help for a in sub._choices_actions} == cli.SUMMARIES


def test_constants_written_down_for_help_match_their_sources():
    from upsample.cli import data, eval as cli_eval, export, make_clip, prune, quantize
    from upsample.evaluation.evaluate import DEGRADES, PROTOCOLS
    assert cli_eval.PROTOCOL_NAMES == tuple(PROTOCOLS) and cli_eval.DEGRADES == DEGRADES
    from upsample.data.prepare import PROBLEM_KINDS
    from upsample.runtime import export as rexport, int8
    from upsample.studies.clips import MOTIONS
    from upsample.training import prune as tprune
    assert data.PROBLEM_KINDS == PROBLEM_KINDS and make_clip.MOTIONS == MOTIONS
    assert prune.METHODS == tprune.METHODS
    assert quantize.SUFFIX == {str(k): v for k, v in int8.SUFFIX.items()}
    assert export.FORMATS == rexport.FORMATS and export.SUFFIX_OF == rexport.SUFFIX_OF


def leaf_parsers(parser: argparse.ArgumentParser, name: str):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield name, parser
    for s in subs:
        for child, p in s.choices.items():
            yield from leaf_parsers(p, f"{name} {child}")


def options_of(command: str):
    _, parsers = full_subparsers()
    for name, p in leaf_parsers(parsers[command], command):
        for a in p._actions:
            if a.option_strings and a.help is not argparse.SUPPRESS and not isinstance(a, argparse._HelpAction):
                yield name, p, a


OWN = [c for c in LIGHT_HELP if c != "train"] + ["train"]


@pytest.mark.parametrize("command", OWN)
def test_help_shows_every_default(command):
    """An option with a value shows its default: the formatter adds it, or (None: "not given")
    the text says what not giving it means."""
    silent = []
    for name, p, a in options_of(command):
        required = a.required or any(g.required and a in g._group_actions for g in p._mutually_exclusive_groups)
        if isinstance(a, (argparse._StoreTrueAction, argparse._StoreFalseAction)) or required:
            continue
        if "default" not in p.formatter_class(prog="x")._get_help_string(a).lower():
            silent.append(f"{name} {a.option_strings[0]}")
    assert silent == []


@pytest.mark.parametrize("command", OWN)
def test_one_spelling_per_concept(command):
    """-o/--output and --overwrite; the old --out and --force parse but are hidden."""
    _, parsers = full_subparsers()
    for name, p in leaf_parsers(parsers[command], command):
        shown = {s for a in p._actions if a.help is not argparse.SUPPRESS for s in a.option_strings}
        assert not shown & {"--out", "--force", "--output-dir", "--outdir"}, name
        for a in p._actions:
            if "--output" in a.option_strings:
                assert a.option_strings == ["-o", "--output"], name


def test_old_spellings_still_parse():
    parser = cli.build_parser(cli.COMMANDS["export"])
    args = parser.parse_args(["export", "espcn-x2", "--out", "m.onnx", "--force"])
    assert args.output == "m.onnx" and args.overwrite
    args = cli.build_parser(cli.COMMANDS["tune"]).parse_args(["tune", "c.toml", "--out", "b.toml"])
    assert args.out == "b.toml"


def test_errors_in_arguments_are_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["image", "x.png", "-o", "y", "--tile", "-1"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and "--tile" in err and "--help" in err
