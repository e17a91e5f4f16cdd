"""`decnef keys DIR`: generate ZeroMQ CURVE key pairs for a multi-host session."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", type=Path, help="folder to write server/client key pairs into")
    parser.add_argument("--force", action="store_true", help="replace keys already in DIR")


def run(args: argparse.Namespace) -> int:
    from runtime.transport.curve import generate_keys

    paths = generate_keys(args.dir, overwrite=args.force)
    print(f"CURVE keys written to {args.dir}:")
    for name, p in paths.items():
        print(f"  {name:<15} {p}")
    print("Senders (stream/engine) need server.key_secret (+ authorized_clients/);")
    print("receivers need server.key and client.key_secret. Set endpoints.curve_keys = DIR.")
    return 0
