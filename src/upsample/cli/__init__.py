"""The `upsample` command line: one argparse parser, a sub-command per module.

Each module in COMMANDS defines `register(subparsers)`, which adds its sub-command and sets
`func` on it; `func(args)` returns the exit code. UserError becomes one line on stderr.

Start-up: only the module of the command named is imported (`upsample models` imports no other
command's code); `upsample --help` and an unknown command import none, the list comes from
SUMMARIES (`tests/test_startup.py` checks it against what each module registers). The command
modules import torch only inside `run`, so that text (help, `models`, errors in the arguments)
appears in a fraction of a second instead of after the 1.5-2 s import of torch.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import importlib
import os
import signal
import sys
import threading
import time

from ..errors import RankZeroError, UserError, one_line
from .options import Stopped

# The sub-commands, in the order `upsample --help` lists them: name -> module.
COMMANDS = {
    "eval": "upsample.cli.eval",
    "image": "upsample.cli.image",
    "video": "upsample.cli.video",
    "bench": "upsample.cli.bench",
    "data": "upsample.cli.data",
    "train": "upsample.cli.train",
    "prune": "upsample.cli.prune",
    "tune": "upsample.cli.tune",
    "quantize": "upsample.cli.quantize",
    "models": "upsample.cli.models",
    "interpolate": "upsample.cli.interpolate",
    "export": "upsample.cli.export",
    "cache": "upsample.cli.cache",
    "codec-study": "upsample.cli.codec_study",
    "make-clip": "upsample.cli.make_clip",
}
# The one-line help each module registers (what `upsample --help` shows without importing them).
SUMMARIES = {
    "eval": "PSNR/SSIM of a model on HR image folders (papers' or catid's protocol)",
    "image": "upscale image files or folders (tiled, any size)",
    "video": "upscale a video; audio, subtitles and data copied as they are",
    "bench": "speed per backend: ms/frame, MP/s, GFLOP/s and share of peak; --train: training speed",
    "data": "prepare, check, clean and split training images",
    "train": "train a model from a TOML recipe or a shipped model's name",
    "prune": "remove filters (structured pruning) with torch-pruning",
    "tune": "search training hyper-parameters with Optuna (TPE; weak trials stopped early)",
    "quantize": "static int8 quantization (ONNX Runtime QDQ or OpenVINO NNCF)",
    "models": "list the registered models: scale, parameters, MACs, weights",
    "interpolate": "blend two checkpoints of one architecture parameter-wise",
    "export": "export a model to ONNX or OpenVINO IR, with a parity check",
    "cache": "what the cache holds (exports, decoded training images, video frames): info or clear",
    "codec-study": "rate-distortion of down-up (ML upscaling) vs full resolution in JPEG/WebP/AVIF "
                   "and x264/x265/AV1, with BD-rate",
    "make-clip": "make a short test clip (pan/zoom) from a large still image",
}


class DefaultsFormatter(argparse.HelpFormatter):
    """Help that ends every option with its default, unless its text already states it; options
    whose default is "off" (None, False, an empty list) say what they do instead."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text.lower() or action.default in (None, False, argparse.SUPPRESS, [])
                or not action.option_strings or action.required):
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """argparse with `DefaultsFormatter` and one-line errors; sub-command parsers are of this class too."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        """One line, as every other user error (the usage is one `--help` away)."""
        hint = (_close_choice(message) + _dashed_path_hint() + _dashed_value_hint(message)
                + _spaced_set_hint(message))
        prog = self.prog
        if message.startswith("unrecognized arguments") and prog == "upsample" and _ARGV[:1] \
                and _ARGV[0] in COMMANDS:  # argparse reports a command's extra words at the top
            prog = f"upsample {_ARGV[0]}"
        self.exit(2, f"{prog}: error: {message}{hint} (see `{prog} --help`)\n")


# The arguments of this command line that start with "-" and name an existing file or folder
# ("-1.png"): argparse reads them as options, and its error does not say so.
_DASHED_PATHS: list[str] = []


def _dashed_path_hint() -> str:
    if not _DASHED_PATHS:
        return ""
    name = _DASHED_PATHS[0]
    return f"; {name} is read as an option: name the file ./{name}, or put it after --"


# This command line, for the hints below.
_ARGV: list[str] = []


def _dashed_value_hint(message: str) -> str:
    """For "argument --max-memory: expected one argument" where the value given starts with "-"
    (`--max-memory -1GB`: argparse takes it for an option), how to pass it; else ""."""
    import re
    m = re.match(r"argument (\S+): expected one argument$", message)
    names = m.group(1).split("/") if m else []
    for opt, value in zip(_ARGV, _ARGV[1:]):
        if opt in names and value.startswith("-") and value != "--":
            return f"; a value that starts with - is written {opt}={value}"
    return ""


def _spaced_set_hint(message: str) -> str:
    """For "unrecognized arguments: = 4" after `--set data.batch_size = 4` (the shell split it),
    how to write it; else ""."""
    if not message.startswith("unrecognized arguments:"):
        return ""
    words = [*_ARGV, ""]
    for i, (opt, key, eq) in enumerate(zip(words, words[1:], words[2:])):
        if opt != "--set" or not (eq.startswith("=") or key.endswith("=")):
            continue
        value = words[i + 3] if eq == "=" else eq.lstrip("=") if eq.startswith("=") else eq
        return f"; --set takes KEY=VALUE as one word, without spaces: --set {key.rstrip('=')}={value}"
    return ""


def _close_choice(message: str) -> str:
    """"; did you mean 'image'?" for argparse's "invalid choice: 'imgae' (choose from ...)" (a
    command, an action, --backend ...) where a choice is close to the typo; else ""."""
    import difflib
    import re
    m = re.search(r"invalid choice: '(.*)' \(choose from (.*)\)$", message)
    if not m:
        return ""
    choices = [c.strip().strip("'") for c in m.group(2).split(",")]
    close = difflib.get_close_matches(m.group(1), choices, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser with every command registered, or (`only`: a module of COMMANDS) with that
    one registered and the others listed by name and summary only (nothing imported)."""
    parser = Parser(prog="upsample", description="Image and video super-resolution: train, evaluate, upscale.")
    from .. import __version__
    parser.add_argument("--version", action="version", version=f"upsample {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        if only is None or only == module:
            importlib.import_module(module).register(sub)
        else:
            sub.add_parser(name, help=SUMMARIES[name])
    return parser


def _parser_for(argv: list[str]) -> argparse.ArgumentParser:
    """The named command's module registered, or (help, --version, a typo) none of them."""
    name = argv[0] if argv else None
    return build_parser(COMMANDS.get(name, "") if name is not None else "")


def without_launcher_rank(argv: list[str]) -> list[str]:
    """`argv` less the `--local_rank=N` the deepspeed launcher puts before the command (unless
    started with --no_local_rank), or the `--local-rank=N` of `python -m torch.distributed.launch`
    (BasicSR's docs use it); the trainer reads LOCAL_RANK from the environment instead."""
    for flag in ("--local_rank", "--local-rank"):
        if argv and argv[0].startswith(flag + "="):
            return argv[1:]
        if argv[:1] == [flag]:
            return argv[2:]
    return argv


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, timeout, docker stop, a scheduler ending a job), handled as Ctrl-C is:
    the output being written is removed, not left half-written (training saves, on its own)."""


# The console command's process id, set when main() installs its handlers: a process forked from
# it (multiprocessing's fork, OpenVINO's telemetry sender) inherits the handler, not the command.
_MAIN_PID: list[int] = []


def _raise_terminated(signum, frame):
    if _MAIN_PID and os.getpid() != _MAIN_PID[0]:  # a forked helper told to stop: no traceback of ours
        os._exit(143)
    raise Terminated


def _end_on_stop_signals(status: int) -> None:
    """Once the command returned and its last line is said: Ctrl-C or SIGTERM from then on
    (during interpreter shutdown, a library's exit handlers) ends the process at once with the
    command's own status, not as one killed by the signal without a word (status -2), nor
    ignored (a hang at exit could then only be killed). For the console command's process only."""
    def end(signum, frame):
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(status)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, end)


def _unencodable_name(exc: UnicodeEncodeError):
    """Write what stdout's encoding cannot hold as the file system's bytes (a name that is not
    UTF-8, read by Python as lone surrogates), else as backslash escapes: a file name never
    ends a run with a traceback after its output was written."""
    try:
        return codecs.lookup_error("surrogateescape")(exc)
    except UnicodeError:
        return codecs.lookup_error("backslashreplace")(exc)


codecs.register_error("upsample-names", _unencodable_name)


def _tolerate_file_names(stream) -> None:
    """`stream` (stdout) with the `upsample-names` handler where it would raise instead: a UTF-8
    locale other than C.UTF-8 and PYTHONIOENCODING make it strict; C.UTF-8 is surrogateescape."""
    if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
        stream.reconfigure(errors="upsample-names")


def main(argv: list[str] | None = None) -> int:
    argv_given = argv
    console = argv is None and threading.current_thread() is threading.main_thread()
    if console:  # the console command
        _MAIN_PID[:] = [os.getpid()]
        signal.signal(signal.SIGTERM, _raise_terminated)
        _tolerate_file_names(sys.stdout)
    argv = without_launcher_rank(sys.argv[1:] if argv is None else list(argv))
    _ARGV[:] = argv
    _DASHED_PATHS[:] = [a for a in argv if a.startswith("-") and a not in ("-", "--") and os.path.lexists(a)]
    parser = _parser_for(argv)
    args = parser.parse_args(argv)
    # when this command began: the console's is its process's start (train --max-minutes counts
    # the imports too); a call from Python (a notebook training several recipes) counts from now
    args.called_at = None if argv_given is None else time.time()
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return _run_command(args, console)


def _run_command(args: argparse.Namespace, console: bool) -> int:
    """`args.func(args)`'s exit status; the errors that end it said in one line."""
    status = _command_status(args)
    if console:
        _end_on_stop_signals(status)
    return status


def _command_status(args: argparse.Namespace) -> int:
    try:
        if getattr(args, "max_pixels", None) is not None:
            from .options import apply_max_pixels
            apply_max_pixels(args.max_pixels)
        return int(args.func(args) or 0)
    except UserError as exc:
        if not isinstance(exc, RankZeroError):  # rank 0 says it
            print(f"upsample {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except Stopped as exc:  # said already, with what was kept (`options.said_stopped`)
        return exc.status
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        print(f"upsample {args.command}: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return 143 if terminated else 130
    except BrokenPipeError:  # `upsample models | head`: the reader left; not an error of ours
        from .options import silence
        silence(sys.stdout)
        return 0
    except OSError as exc:  # the file system said no: an unreadable input, a read-only or full disk, a folder
        # for a file; which of them, read or write, the error does not say
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"upsample {args.command}: error: {exc.strerror or exc}{where}: check that path (an input "
              "must be readable; an output location writable, with free space, and not a folder)", file=sys.stderr)
        return 1
    except MemoryError:
        print(f"upsample {args.command}: error: out of memory: use a smaller input, scale or "
              "--max-memory", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
