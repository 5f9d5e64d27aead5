# Aggregation: cells -> long-format table, metrics and summaries -> the paper's figures. Every
# table and figure goes into `snakemake --report` with its caption (workflow/report/*.rst).

localrules:
    aggregate,
    figures,
    usage,


rule aggregate:
    input:
        **GRAPH.job("aggregate").inputs(),  # every cell and distance of the grid
    output:
        cells=report(PAT["cells"], caption="../report/cells.rst", category="Tables"),
        metrics=report(PAT["metrics"], caption="../report/metrics.rst", category="Tables"),
        summary=report(PAT["summary"], caption="../report/summary.rst", category="Tables"),
        summary_md=PAT["summary_md"],
        summary_tex=PAT["summary_tex"],
        methods_summary=report(PAT["methods_summary"], caption="../report/methods_summary.rst", category="Tables"),
        sweeps=report(PAT["sweeps"], caption="../report/sweeps.rst", category="Tables"),
        ri_matrix=report(PAT["ri_matrix"], caption="../report/ri_matrix.rst", category="Tables"),
        corruptions=report(PAT["corruptions"], caption="../report/corruptions.rst", category="Tables"),
        distances=report(PAT["distances"], caption="../report/distances.rst", category="Tables"),
        metrics_json=PAT["metrics_json"],
        robustness=report(PAT["robustness"], caption="../report/robustness.rst", category="Tables"),
        robustness_cells=PAT["robustness_cells"],
        robustness_md=PAT["robustness_md"],
        robustness_tex=PAT["robustness_tex"],
        baseline=PAT["baseline"],
        baseline_lines=report(PAT["baseline_lines"], caption="../report/baseline_lines.rst", category="Tables"),
    log:
        f"{LOGS}/aggregate.log",
    params:
        robustness=rib_config.robustness_settings(PARAMS),  # the baseline's axes and reference models
    conda:
        CONDA_ENV
    shell:
        "python -m rib aggregate > {log} 2>&1"


rule figures:
    input:
        **GRAPH.job("figures").inputs(),
    output:
        [report(f, caption=f"../report/{Path(f).stem}.rst", category="Figures", subcategory=Path(f).suffix[1:].upper())
         for f in rib_grid.figure_paths(SUITE.name)],
    log:
        f"{LOGS}/figures.log",
    params:
        report=PARAMS["report"],
    conda:
        CONDA_ENV
    shell:
        "python -m rib figures > {log} 2>&1"


# Time and memory of every compute job (the benchmark: files of pretrain, finetune, evaluate,
# combine and distance), per rule: reports/<suite>/usage_by_rule.md. Run after the report, so
# every job of the grid has its record.
rule usage:
    input:
        REPORT_OUTPUTS,
    output:
        USAGE_OUTPUTS,
    log:
        f"{LOGS}/usage.log",
    conda:
        CONDA_ENV
    shell:
        "python -m rib usage > {log} 2>&1"
