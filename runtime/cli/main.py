"""`decnef` entry point.

Each sub-command lives in its own module `runtime.cli.cmd_<name>` with two functions,
`add_arguments(parser)` and `run(args) -> int`, imported only when that command runs (so
`decnef convert` never pays for PsychoPy or numba start-up). A `UserError` anywhere becomes one
line on stderr and exit status 2; no traceback for a user's mistake.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from runtime import __version__
from runtime.errors import UserError

COMMANDS: dict[str, str] = {
    "demo": "synthetic phantom: train a decoder, replay a neurofeedback run end to end, print scores and latency",
    "run": "start streamer, engine (and display/agent) for a session config; optionally simulate the scanner",
    "convert": "assemble a DICOM series into a 4D NIfTI + JSON sidecar",
    "stream": "watch a scanner export folder and publish volumes on ZeroMQ",
    "listen": "receive the volume stream and record every volume (with catch-up after restarts)",
    "replay": "replay a DICOM series or 4D NIfTI into a folder at the TR, with optional faults",
    "realign": "realign a 4D NIfTI volume by volume exactly as online; write motion parameters",
    "train": "build a decoder bundle from localizer runs with the online feature path",
    "calibrate": "percentile reference (E13) for a decoder bundle from a resting-state run",
    "engine": "the online engine: volumes in, DecNef scores out",
    "display": "PsychoPy feedback display locked to scanner triggers",
    "agent": "the co-adaptive agent driving a stimulator within hard safety limits",
    "participant": "virtual participant of the pain loop: closed-loop volumes and an emulated thermode (simulation)",
    "monitor": "the operator's live view of a run: motion, NG scans, scores, alarms and a summary",
    "keys": "generate ZeroMQ CURVE key pairs for a multi-host session",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every user error
        self.exit(2, f"{self.prog}: error: {message}\n")


def _top_help() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = [f"usage: decnef <command> [options]   (decnef {__version__})", "", "commands:"]
    lines += [f"  {name:<{width}}  {desc}" for name, desc in COMMANDS.items()]
    lines += ["", "Run `decnef <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_top_help())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"decnef {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"decnef: error: unknown command '{name}' (expected one of: {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(f"runtime.cli.cmd_{name}")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("runtime.cli.cmd_"):
            print(f"decnef: error: command '{name}' is not available in this build", file=sys.stderr)
            return 2
        raise
    parser = _Parser(prog=f"decnef {name}", description=COMMANDS[name])
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except UserError as exc:
        print(f"decnef {name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"decnef {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
