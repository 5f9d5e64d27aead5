# Pretrained models. rib-mini trains its small timm models from scratch on a synthetic corpus.


rule pretrain:
    input:
        data=corpus_of,
    output:
        PAT["pretrained"],
    log:
        f"{LOGS}/pretrain/{{model}}.log",
    params:
        schedule=PARAMS["pretrain"],
        seed=PARAMS["seed"],
    threads: THREADS
    conda:
        CONDA_ENV
    shell:
        "python -m rib pretrain {wildcards.model} --data {input.data} --out {output} --threads {threads} > {log} 2>&1"
