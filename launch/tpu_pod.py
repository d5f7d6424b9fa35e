"""Launch cwcl_jax training on every worker of a Cloud TPU VM pod slice.

Steps (each a gcloud command; `--dry-run` prints them instead):
1. pack the git-tracked files of this checkout into a tarball;
2. copy it to every worker (`gcloud compute tpus tpu-vm scp --worker=all`);
3. on every worker: stop stale trainer processes, release the TPU lock, unpack, install
   (`scripts/install.sh` + the `tpu` extra);
4. on every worker: start the trainer in the background with its log in
   `~/cwcl_logs/<hostname>.log` (JAX finds the other workers by itself: `--distributed=on`).

Example:
  python launch/tpu_pod.py --tpu my-v4-64 --zone us-central2-b --project my-proj \\
    --config configs/lit_cwcl_vit_b16.py --workdir gs://bucket/runs/lit1 --dry-run
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import main_args, run_or_print  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TARBALL = "/tmp/cwcl_jax_code.tgz"
REMOTE_DIR = "~/cwcl_jax"
LOG_DIR = "~/cwcl_logs"


def _gcloud(args: argparse.Namespace, verb: str, *rest: str) -> list[str]:
    return [
        "gcloud", "compute", "tpus", "tpu-vm", verb, *rest,
        "--worker=all", f"--zone={args.zone}", f"--project={args.project}",
    ]  # fmt: skip


def _remote_setup() -> str:
    return " && ".join(
        [
            # The brackets keep the pattern from matching this very shell's command line.
            "(pkill -f '[-]m cwcl_jax[.]main' || true)",
            "sleep 2",
            "sudo rm -f /tmp/libtpu_lockfile",
            f"mkdir -p {REMOTE_DIR} {LOG_DIR}",
            f"tar xzf ~/{Path(TARBALL).name} -C {REMOTE_DIR}",
            f"cd {REMOTE_DIR}",
            "./scripts/install.sh",
            ".venv/bin/python -m pip install -q -e '.[tpu]'",
        ]
    )


def _remote_run(args: argparse.Namespace) -> str:
    trainer = shlex.join([".venv/bin/python", *main_args(args.config, args.workdir, args.extra)])
    log = f"{LOG_DIR}/$(hostname).log"
    return f"cd {REMOTE_DIR} && nohup {trainer} > {log} 2>&1 &"


def commands(args: argparse.Namespace) -> list[list[str]]:
    """Every command of a launch, in order."""
    pack = ["bash", "-c", f"cd {shlex.quote(str(REPO))} && git ls-files -z | "
            f"tar czf {TARBALL} --null -T -"]  # fmt: skip
    return [
        pack,
        _gcloud(args, "scp", TARBALL, f"{args.tpu}:~/"),
        _gcloud(args, "ssh", args.tpu, f"--command={_remote_setup()}"),
        _gcloud(args, "ssh", args.tpu, f"--command={_remote_run(args)}"),
    ]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tpu", required=True, help="TPU VM name")
    parser.add_argument("--zone", required=True)
    parser.add_argument("--project", required=True)
    parser.add_argument("--config", required=True, help="e.g. configs/lit_cwcl_vit_b16.py")
    parser.add_argument("--workdir", required=True, help="shared path, e.g. gs://bucket/run")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    args, extra = parser.parse_known_args(argv)
    args.extra = extra
    return args


if __name__ == "__main__":
    cli = parse(sys.argv[1:])
    run_or_print(commands(cli), cli.dry_run)
    if not cli.dry_run:
        print(f"Logs: gcloud compute tpus tpu-vm ssh {cli.tpu} --worker=0 --zone={cli.zone} "
              f"--command='tail -f {LOG_DIR}/*.log'")  # fmt: skip
