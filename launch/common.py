"""Shared by the launchers: run a list of commands, or print them exactly (--dry-run)."""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Sequence


def run_or_print(commands: Sequence[Sequence[str]], dry_run: bool) -> None:
    """Run each command in order (stop at the first failure), or print them for review."""
    for command in commands:
        if dry_run:
            print(shlex.join(command))
            continue
        print(f"+ {shlex.join(command)}", file=sys.stderr, flush=True)
        subprocess.run(command, check=True)


def main_args(config: str, workdir: str, overrides: Sequence[str]) -> list[str]:
    """The trainer's command line (after the interpreter), as every worker runs it."""
    for override in overrides:
        if not override.startswith("--"):
            raise SystemExit(f"extra arguments are trainer flags (--config.x=y), got {override!r}")
    return [
        "-m",
        "cwcl_jax.main",
        f"--config={config}",
        f"--workdir={workdir}",
        "--distributed=on",
        *overrides,
    ]
