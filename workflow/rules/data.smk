# Datasets: generate (synthetic suites) -> prepare (index, verify, held-out split).

if SUITE.synthetic:

    rule generate:
        output:
            directory(PAT["raw"]),
        log:
            f"{LOGS}/generate/{{dataset}}.log",
        params:
            settings=lambda w: {"seed": PARAMS["seed"], "synthetic": PARAMS["synthetic"]},
        threads: 1
        conda:
            CONDA_ENV
        shell:
            "python -m rib data generate {wildcards.dataset} --out {output} > {log} 2>&1"


rule prepare:
    input:
        PAT["raw"],
    output:
        directory(PAT["prepared"]),
    log:
        f"{LOGS}/prepare/{{dataset}}.log",
    params:
        split=PARAMS["split"],
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "python -m rib data prepare {wildcards.dataset} --raw {input} --out {output} > {log} 2>&1"
