# Aggregation: cells -> long-format table, metrics and summaries -> the paper's figures.

localrules:
    aggregate,
    figures,


rule aggregate:
    input:
        [cell.path(SUITE.name) for cell in rib_grid.cells(PARAMS)],
    output:
        cells=PAT["cells"],
        metrics=PAT["metrics"],
        summary=PAT["summary"],
        summary_md=PAT["summary_md"],
        methods_summary=PAT["methods_summary"],
        sweeps=PAT["sweeps"],
    log:
        f"{LOGS}/aggregate.log",
    conda:
        CONDA_ENV
    shell:
        "python -m rib aggregate > {log} 2>&1"


rule figures:
    input:
        metrics=PAT["metrics"],
        summary=PAT["summary"],
    output:
        radar=report(PAT["radar"], caption="../report/radar.rst", category="Figures"),
        bar=report(PAT["bar"], caption="../report/bar.rst", category="Figures"),
    log:
        f"{LOGS}/figures.log",
    params:
        report=PARAMS["report"],
    conda:
        CONDA_ENV
    shell:
        "python -m rib figures > {log} 2>&1"
