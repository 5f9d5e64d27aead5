# Evaluation: one job per checkpoint writes that checkpoint's cells, one JSON per dataset.
# The pretrained model is evaluated once per dataset and shared by every method.


rule evaluate_pretrained:
    input:
        checkpoint=PAT["pretrained"],
        data=[prepared(d) for d in EVALS],
    output:
        expand(PAT["pretrained_cell"], eval=EVALS, allow_missing=True),
    log:
        f"{LOGS}/evaluate/{{model}}/pretrained.log",
    params:
        settings=PARAMS["evaluate"],
        out_dir=lambda w, output: os.path.dirname(output[0]),
    threads: THREADS
    conda:
        CONDA_ENV
    shell:
        "python -m rib evaluate {input.checkpoint} {input.data} --out-dir {params.out_dir} --threads {threads} > {log} 2>&1"


rule evaluate_finetuned:
    input:
        checkpoint=PAT["finetuned"],
        data=[prepared(d) for d in EVALS],
    output:
        expand(PAT["finetuned_cell"], eval=EVALS, allow_missing=True),
    log:
        f"{LOGS}/evaluate/{{model}}/{{method}}/{{dataset}}.log",
    params:
        settings=PARAMS["evaluate"],
        out_dir=lambda w, output: os.path.dirname(output[0]),
    threads: THREADS
    conda:
        CONDA_ENV
    shell:
        "python -m rib evaluate {input.checkpoint} {input.data} --out-dir {params.out_dir} --threads {threads} > {log} 2>&1"
