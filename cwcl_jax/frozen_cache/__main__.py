"""`python -m cwcl_jax.frozen_cache --config configs/demo.py --workdir DIR`: build the
frozen-tower cache of the config's train split (or finish an interrupted build, or check a
complete one), in `config.frozen_cache.dir`, else `--cache_dir`, else DIR/frozen_cache.

Multi-host: start it on every process like training (see docs/launch.md); each process
writes its own shard into the shared directory.
"""

from __future__ import annotations

import sys
import time

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from cwcl_jax import distributed, experiment, frozen_cache

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/<name>.py[:arg]")
_WORKDIR = flags.DEFINE_string("workdir", None, "the run's workdir (cache in DIR/frozen_cache)")
_CACHE_DIR = flags.DEFINE_string("cache_dir", None, "cache directory (overrides the config's)")
_DISTRIBUTED = flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                                 "multi-process start-up; see docs/launch.md")  # fmt: skip
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "processes in the build")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's index")
flags.mark_flag_as_required("config")


def run(config, workdir: str | None, cache_dir: str | None) -> frozen_cache.FrozenCache:
    """Builds or finishes (or opens and verifies) the cache; returns it."""
    if cache_dir:
        config.frozen_cache.dir = cache_dir
    if not (config.frozen_cache.dir or workdir):
        raise app.UsageError("give --workdir, --cache_dir or --config.frozen_cache.dir")
    config.frozen_cache.enabled = True  # what the cache is for; checks the config for it
    exp, frozen_params, _ = experiment.build_experiment(config, with_weights=True)
    directory = frozen_cache.cache_dir(config, workdir or "")
    start = time.perf_counter()
    cache = frozen_cache.build(exp, frozen_params, directory)
    if jax.process_index() == 0:
        print(
            f"frozen cache {directory}: {len(cache.present())} of {cache.num_examples} examples, "
            f"dim {cache.dim} float32, content sha256 {cache.manifest['content_sha256']} "
            f"({time.perf_counter() - start:.1f} s)",
            flush=True,
        )
    return cache


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    distributed.initialize(
        mode=_DISTRIBUTED.value,
        coordinator_address=_COORDINATOR.value,
        num_processes=_NUM_PROCESSES.value,
        process_id=_PROCESS_ID.value,
    )
    logging.info("Building the frozen cache for %s.", _CONFIG.value.data.name)
    run(_CONFIG.value, _WORKDIR.value, _CACHE_DIR.value)


if __name__ == "__main__":
    sys.exit(app.run(main))
