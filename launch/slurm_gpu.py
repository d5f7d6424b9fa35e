"""Launch cwcl_jax training on a multi-node GPU cluster with SLURM.

Writes an sbatch script (one task per node, every GPU of the node in that task) and
submits it. `srun` starts the trainer on every node; JAX reads the SLURM environment to
find the coordinator (`--distributed=on`). Each task logs to
`<workdir>/logs/<job id>_<task id>.log`. SLURM sends SIGTERM `--grace` seconds before the
time limit, which makes the trainer save a checkpoint and exit; `--requeue` restarts the
job, and the trainer resumes from that checkpoint.

Example:
  python launch/slurm_gpu.py --nodes 4 --gpus-per-node 8 --partition a100 \\
    --config configs/speech_cwcl.py --workdir /shared/runs/speech1 --dry-run
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import main_args, run_or_print  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def sbatch_script(args: argparse.Namespace) -> str:
    """The batch script's text."""
    python = f"{REPO}/.venv/bin/python"
    trainer = shlex.join([python, *main_args(args.config, args.workdir, args.extra)])
    log = f"{args.workdir}/logs/%j_%t.log"
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={args.job_name}",
        f"#SBATCH --nodes={args.nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --gpus-per-node={args.gpus_per_node}",
        f"#SBATCH --cpus-per-task={args.cpus_per_task}",
        f"#SBATCH --time={args.time}",
        f"#SBATCH --signal=TERM@{args.grace}",
        "#SBATCH --requeue",
        f"#SBATCH --output={args.workdir}/logs/%j_sbatch.log",
    ]
    if args.partition:
        lines.append(f"#SBATCH --partition={args.partition}")
    lines += [
        "set -euo pipefail",
        f"mkdir -p {shlex.quote(args.workdir)}/logs",
        f"cd {shlex.quote(str(REPO))}",
        "export XLA_PYTHON_CLIENT_MEM_FRACTION=0.9",
        f"srun --kill-on-bad-exit=1 --output={log} {trainer}",
    ]
    return "\n".join(lines) + "\n"


def submit(args: argparse.Namespace) -> None:
    """Write the script into the workdir and sbatch it (or print both with --dry-run)."""
    script = sbatch_script(args)
    path = Path(args.workdir) / f"{args.job_name}.sbatch"
    if args.dry_run:
        print(f"# {path}\n{script}", end="")
    else:
        (path.parent / "logs").mkdir(parents=True, exist_ok=True)
        path.write_text(script)
    run_or_print([["sbatch", str(path)]], args.dry_run)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--cpus-per-task", type=int, default=32)
    parser.add_argument("--partition", default="")
    parser.add_argument("--time", default="24:00:00")
    parser.add_argument("--grace", type=int, default=300, help="SIGTERM seconds before the end")
    parser.add_argument("--job-name", default="cwcl")
    parser.add_argument("--config", required=True)
    parser.add_argument("--workdir", required=True, help="a path every node can reach")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    args, extra = parser.parse_known_args(argv)
    if args.nodes < 1 or args.gpus_per_node < 1:
        parser.error("--nodes and --gpus-per-node must be >= 1")
    args.extra = extra
    return args


if __name__ == "__main__":
    submit(parse(sys.argv[1:]))
