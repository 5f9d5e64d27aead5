# Datasets: generate (synthetic suites) -> prepare (index, verify, held-out split).
# Evaluation datasets live under data/<suite>/{raw,prepared}/, pretraining corpora under
# data/<suite>/corpora/{raw,prepared}/.

if SUITE.synthetic:

    rule generate:
        output:
            directory(PAT["raw"]),
        log:
            f"{LOGS}/generate/{{dataset}}.log",
        params:
            settings=lambda w: {"seed": PARAMS["seed"], "synthetic": PARAMS["synthetic"]},
        threads: 1
        wildcard_constraints:
            dataset=EVAL_NAMES,
        conda:
            CONDA_ENV
        shell:
            "python -m rib data generate {wildcards.dataset} --out {output} > {log} 2>&1"

    use rule generate as generate_corpus with:
        output:
            directory(PAT["corpus_raw"]),
        wildcard_constraints:
            dataset=CORPUS_NAMES,


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
    wildcard_constraints:
        dataset=EVAL_NAMES,
    conda:
        CONDA_ENV
    shell:
        "python -m rib data prepare {wildcards.dataset} --raw {input} --out {output} > {log} 2>&1"


use rule prepare as prepare_corpus with:
    input:
        PAT["corpus_raw"],
    output:
        directory(PAT["corpus_prepared"]),
    wildcard_constraints:
        dataset=CORPUS_NAMES,
