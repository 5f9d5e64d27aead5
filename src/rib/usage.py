"""What each job of a Snakemake run cost: Snakemake's ``benchmark:`` records, summarised per rule.

The compute rules (pretrain, finetune, evaluate_pretrained, evaluate_finetuned, combine, distance)
declare ``benchmark:`` files under ``logs/<suite>/benchmark/<rule>/``: Snakemake writes one TSV per
job with its wall time (``s``), peak memory (``max_rss``, MB) and CPU time (``cpu_time``), measured
on the job's process tree. A local run executes each ``rib`` command in a fork of the rib server,
outside that tree, so Snakemake sees the client only; the client then writes the fork's own CPU
time and peak RSS to the job's log (:func:`rib.server.usage_line`), and this module takes those
instead. On a cluster (or with ``fork_server: false``) jobs are ordinary processes and Snakemake's
numbers stand.

``rib usage`` writes ``reports/<suite>/usage.csv`` (one row per job) and ``usage_by_rule.csv`` /
``.md`` (per rule: jobs, wall time total / mean / max, CPU time, peak memory), with the measured
images/s of full fine-tuning and evaluation per model family in the form ``rib plan --throughput``
takes: a pilot run's usage plans the full grid.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd

from . import grid
from .server import USAGE_PREFIX

# The log folder of each benchmarked rule's job: its benchmark file is
# logs/<suite>/benchmark/<rule>/<rest>.tsv and its log logs/<suite>/<step>/<rest>.log.
STEP_OF_RULE = {"pretrain": "pretrain", "finetune": "finetune", "evaluate_pretrained": "evaluate",
                "evaluate_snapshots": "evaluate", "evaluate_finetuned": "evaluate", "combine": "combine",
                "distance": "distance"}
_FORK = re.compile(re.escape(USAGE_PREFIX) + r" CPU ([0-9.]+) s, peak RSS ([0-9.]+) MiB\s*$", re.MULTILINE)
JOB_COLUMNS = ["rule", "job", "wall_s", "cpu_s", "peak_rss_mib", "measured_in"]


def benchmark_file(logs: str, rule: str, rest: str) -> str:
    """Where a rule's job writes its benchmark (``rest``: the job's log path below its step folder)."""
    return f"{logs}/benchmark/{rule}/{rest}.tsv"


def _fork_usage(log: Path) -> tuple[float, float] | None:
    try:
        found = _FORK.findall(log.read_text(errors="replace"))
    except OSError:
        return None
    return (float(found[-1][0]), float(found[-1][1])) if found else None


def jobs(logs: str | Path) -> pd.DataFrame:
    """One row per benchmarked job under ``logs`` (``logs/<suite>``)."""
    logs = Path(logs)
    rows = []
    for rule, step in STEP_OF_RULE.items():
        for tsv in sorted((logs / "benchmark" / rule).rglob("*.tsv")):
            rest = tsv.relative_to(logs / "benchmark" / rule).with_suffix("")
            record = pd.read_csv(tsv, sep="\t", na_values=["-", "NA"])
            if record.empty:
                continue
            first = record.iloc[0]
            row = {"rule": rule, "job": str(rest), "wall_s": float(first["s"]),
                   "cpu_s": float(first.get("cpu_time", float("nan"))),
                   "peak_rss_mib": float(first.get("max_rss", float("nan"))) * 1e6 / 2**20,
                   "measured_in": "process"}
            fork = _fork_usage(logs / step / f"{rest}.log")
            if fork is not None:
                row.update(cpu_s=fork[0], peak_rss_mib=fork[1], measured_in="fork")
            rows.append(row)
    return pd.DataFrame(rows, columns=JOB_COLUMNS)


def by_rule(table: pd.DataFrame) -> pd.DataFrame:
    """Per rule: jobs, wall time (total, mean, max), CPU time (total), peak RSS (the largest job's)."""
    if table.empty:
        return pd.DataFrame(columns=["rule", "jobs", "wall_total_s", "wall_mean_s", "wall_max_s", "cpu_total_s",
                                     "peak_rss_mib", "measured_in"])
    grouped = table.groupby("rule", sort=False)
    out = pd.DataFrame({
        "jobs": grouped.size(),
        "wall_total_s": grouped["wall_s"].sum(),
        "wall_mean_s": grouped["wall_s"].mean(),
        "wall_max_s": grouped["wall_s"].max(),
        "cpu_total_s": grouped["cpu_s"].sum(min_count=1),
        "peak_rss_mib": grouped["peak_rss_mib"].max(),
        "measured_in": grouped["measured_in"].agg(lambda s: "+".join(sorted(set(s)))),
    }).reset_index()
    order = {rule: i for i, rule in enumerate(STEP_OF_RULE)}
    return out.sort_values("rule", key=lambda s: s.map(order)).reset_index(drop=True)


def throughputs(params: dict, table: pd.DataFrame, root: str | Path = ".") -> dict[str, tuple[float, float]]:
    """Measured images/s per model family: (full fine-tuning, evaluation), from the jobs' wall times
    and the images ``rib plan`` counts for each job. Wall time is the whole job (data loading and
    writing included), so these are end-to-end rates, the ones a plan of a larger grid wants:
    ``rib plan --throughput FAMILY=TRAIN,EVAL``."""
    from .config import method_schedule
    from .models.registry import get_model, model_slug
    from .plan import _job_cost, dataset_sizes, family, jobs

    sizes = dataset_sizes(params, root)
    eval_images = sum(sizes[d].images for d in grid.eval_datasets(params))
    wall = {(r.rule, r.job): r.wall_s for r in table.itertuples(index=False)}
    sums: dict[tuple[str, str], list[float]] = {}
    for job in jobs(params):
        if job.rule == "finetune" and method_schedule(params, job.method)["method"] != "ft":
            continue  # the training rate is full fine-tuning's, as benchmarks/throughputs.yaml's
        if job.rule not in ("finetune", "evaluate_pretrained", "evaluate_finetuned"):
            continue
        rest = "/".join([model_slug(job.model)] + ([job.method, job.dataset] if job.rule != "evaluate_pretrained"
                                                   else ["pretrained"]))
        seconds = wall.get((job.rule, rest))
        if not seconds or math.isnan(seconds):
            continue
        images, _ = _job_cost(params, job, sizes, eval_images)
        kind = "train" if job.rule == "finetune" else "eval"
        acc = sums.setdefault((family(get_model(job.model, params)), kind), [0.0, 0.0])
        acc[0] += images
        acc[1] += seconds
    out = {}
    for fam in sorted({f for f, _ in sums}):
        train, ev = sums.get((fam, "train")), sums.get((fam, "eval"))
        if train and ev:
            out[fam] = (train[0] / train[1], ev[0] / ev[1])
    return out


def markdown(summary: pd.DataFrame, rates: dict[str, tuple[float, float]] | None = None) -> str:
    lines = ["| rule | jobs | wall total (s) | wall mean (s) | wall max (s) | CPU total (s) | peak RSS (MiB) | measured in |",
             "|---|---|---|---|---|---|---|---|"]
    for r in summary.itertuples(index=False):
        lines.append(f"| {r.rule} | {r.jobs} | {r.wall_total_s:.1f} | {r.wall_mean_s:.2f} | {r.wall_max_s:.2f} | "
                     f"{r.cpu_total_s:.1f} | {r.peak_rss_mib:.0f} | {r.measured_in} |")
    for fam, (train, ev) in (rates or {}).items():
        lines.append(f"\nMeasured end to end, model family {fam}: full fine-tuning {train:.1f} images/s, evaluation "
                     f"{ev:.1f} images/s; a plan of a larger grid at these rates: "
                     f"`rib plan --throughput {fam}={train:.4g},{ev:.4g}`")
    return "\n".join(lines) + "\n"


def write(logs: str | Path, out_dir: str | Path, params: dict | None = None) -> tuple[pd.DataFrame, dict]:
    """Write usage.csv, usage_by_rule.csv and usage_by_rule.md under ``out_dir`` (with ``params``, the
    measured throughputs too); returns the summary and the throughputs."""
    from .io import write_text

    table = jobs(logs)
    summary = by_rule(table)
    rates = throughputs(params, table) if params is not None and not table.empty else {}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "usage.csv", table.to_csv(index=False, float_format="%.3f"))
    write_text(out_dir / "usage_by_rule.csv", summary.to_csv(index=False, float_format="%.3f"))
    write_text(out_dir / "usage_by_rule.md", markdown(summary, rates))
    return summary, rates
