"""Per-job time and memory (rib.usage): Snakemake's benchmark records, with a fork's own usage
taking the place of the client's that Snakemake measured."""

from __future__ import annotations

from pathlib import Path

import pytest

from rib import usage
from rib.server import usage_line

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _job(logs: Path, rule: str, step: str, rest: str, wall: float, rss_mb, cpu, fork: tuple | None = None):
    tsv = logs / "benchmark" / rule / f"{rest}.tsv"
    tsv.parent.mkdir(parents=True, exist_ok=True)
    tsv.write_text(HEADER + f"{wall}\t0:00:01\t{rss_mb}\t1\t1\t1\t0\t0\t0\t{cpu}\n")
    log = logs / step / f"{rest}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    text = "INFO training\n"
    if fork:
        text += usage_line({"cpu_s": fork[0], "max_rss_mib": fork[1]}) + "\n"
    log.write_text(text)


def test_a_forks_usage_replaces_the_clients_and_rules_are_summed(tmp_path):
    logs = tmp_path / "logs" / "rib-mini"
    _job(logs, "finetune", "finetune", "m/ft/c", 2.0, 14.7, 0.05, fork=(1.75, 530.2))  # local: in a fork
    _job(logs, "finetune", "finetune", "m/lp/c", 4.0, 600.0, 3.9)  # a SLURM job: Snakemake saw it all
    _job(logs, "evaluate_pretrained", "evaluate", "m/pretrained", 1.0, "-", "-")  # too short to sample
    _job(logs, "evaluate_finetuned", "evaluate", "m/ft/c", 0.5, 12.0, 0.01, fork=(0.4, 510.0))
    table = usage.jobs(logs)
    ft = table.set_index(["rule", "job"]).loc[("finetune", "m/ft/c")]
    assert (ft.cpu_s, ft.peak_rss_mib, ft.measured_in) == (1.75, 530.2, "fork")
    lp = table.set_index(["rule", "job"]).loc[("finetune", "m/lp/c")]
    assert lp.cpu_s == 3.9 and lp.peak_rss_mib == pytest.approx(600e6 / 2**20) and lp.measured_in == "process"
    summary = usage.by_rule(table).set_index("rule")
    assert list(summary.index) == ["finetune", "evaluate_pretrained", "evaluate_finetuned"]  # pipeline order
    f = summary.loc["finetune"]
    assert (f.jobs, f.wall_total_s, f.wall_mean_s, f.wall_max_s) == (2, 6.0, 3.0, 4.0)
    assert f.cpu_total_s == pytest.approx(5.65) and f.peak_rss_mib == pytest.approx(600e6 / 2**20)
    assert f.measured_in == "fork+process"
    assert summary.loc["evaluate_pretrained"].jobs == 1  # NA memory stays NA, the job still counts
    written, rates = usage.write(logs, tmp_path / "reports")  # without params: no throughputs
    assert len(written) == 3 and rates == {}
    md = (tmp_path / "reports" / "usage_by_rule.md").read_text()
    assert "| finetune | 2 | 6.0 | 3.00 | 4.00 | 5.7 | 572 | fork+process |" in md
