# Evaluation: one job per checkpoint writes that checkpoint's cells, one JSON per dataset.
# The pretrained model is evaluated once per dataset and shared by every method.


rule evaluate_pretrained:
    input:
        checkpoint=PAT["pretrained"],
        data=[prepared(d) for d in EVALS],
        cache=lambda w: caches(w.model, EVALS),
    output:
        expand(PAT["pretrained_cell"], eval=EVALS, allow_missing=True),
    log:
        f"{LOGS}/evaluate/{{model}}/pretrained.log",
    benchmark:
        bench("evaluate_pretrained", "{model}/pretrained")
    params:
        settings=PARAMS["evaluate"],
        out_dir=lambda w, output: os.path.dirname(output[0]),
    threads: THREADS
    resources:
        **job_resources("evaluate"),
    conda:
        CONDA_ENV
    shell:
        "python -m rib evaluate {input.checkpoint} {input.data} --cache {input.cache} --out-dir {params.out_dir} "
        "--threads {threads} > {log} 2>&1"


rule evaluate_finetuned:
    input:
        checkpoint=PAT["finetuned"],
        data=[prepared(d) for d in EVALS],
        cache=lambda w: caches(w.model, EVALS),
    output:
        expand(PAT["finetuned_cell"], eval=EVALS, allow_missing=True),
    log:
        f"{LOGS}/evaluate/{{model}}/{{method}}/{{dataset}}.log",
    benchmark:
        bench("evaluate_finetuned", "{model}/{method}/{dataset}")
    params:
        settings=PARAMS["evaluate"],
        out_dir=lambda w, output: os.path.dirname(output[0]),
    threads: THREADS
    resources:
        **job_resources("evaluate"),
    wildcard_constraints:
        method=train_regex(TRAIN_ENTRIES),
    conda:
        CONDA_ENV
    shell:
        "python -m rib evaluate {input.checkpoint} {input.data} --cache {input.cache} --out-dir {params.out_dir} "
        "--threads {threads} > {log} 2>&1"


# Weight-space methods (WiSE-FT, soups, Model Stock): combine finished checkpoints of the same
# (model, D_ft) without training and evaluate the result(s); one job writes all its cells.
rule combine:
    input:
        pretrained=PAT["pretrained"],
        ingredients=lambda w: [finetuned(w.model, m, w.dataset) for m in rib_methods.trained_ingredients(PARAMS, w.method)],
        data=[prepared(d) for d in EVALS],
        cache=lambda w: caches(w.model, EVALS),
    output:
        expand(PAT["finetuned_cell"], eval=EVALS, allow_missing=True),
    log:
        f"{LOGS}/combine/{{model}}/{{method}}/{{dataset}}.log",
    benchmark:
        bench("combine", "{model}/{method}/{dataset}")
    params:
        settings=lambda w: rib_config.method_schedule(PARAMS, w.method),
        evaluate=PARAMS["evaluate"],
        own=lambda w: prepared(w.dataset),
        out_dir=lambda w, output: os.path.dirname(output[0]),
    threads: THREADS
    # WiSE-FT's sweep evaluates a model per alpha: the longest jobs of a grid. Started first among the
    # jobs ready to run, they do not end a run on one busy core while the others idle.
    priority: 1
    resources:
        **job_resources("combine"),
    wildcard_constraints:
        method=train_regex(WEIGHT_ENTRIES),
    conda:
        CONDA_ENV
    shell:
        "python -m rib combine {wildcards.model} {wildcards.method} {wildcards.dataset} "
        "--pretrained {input.pretrained} --ingredients {input.ingredients} --data {params.own} "
        "--cache {input.cache} --out-dir {params.out_dir} --threads {threads} > {log} 2>&1"
