# Evaluation: one job per checkpoint writes that checkpoint's cells, one JSON per dataset.
# The pretrained model is evaluated once per dataset and shared by every method.


rule evaluate_pretrained:
    input:
        unpack(job_inputs("evaluate_pretrained")),
    output:
        expand(PAT["pretrained_cell"], eval=EVALS, allow_missing=True),
    log:
        f"{LOGS}/evaluate/{{model}}/pretrained.log",
    benchmark:
        bench("evaluate_pretrained", "{model}/pretrained")
    params:
        settings=PARAMS["evaluate"],
        command=job_command("evaluate_pretrained"),
    threads: THREADS
    resources:
        **job_resources("evaluate"),
    conda:
        CONDA_ENV
    shell:
        "python -m rib {params.command} --threads {threads} > {log} 2>&1"


# The pretraining snapshots of a model the pipeline pretrains, evaluated on every dataset: the
# baseline points that effective robustness's line is fit on (besides the pretrained models).
rule evaluate_snapshots:
    input:
        unpack(job_inputs("evaluate_snapshots")),
    output:
        PAT["snapshot_cells"],
    log:
        f"{LOGS}/evaluate/{{model}}/snapshots.log",
    benchmark:
        bench("evaluate_snapshots", "{model}/snapshots")
    params:
        settings=PARAMS["evaluate"],
        command=job_command("evaluate_snapshots"),
    threads: THREADS
    resources:
        **job_resources("evaluate"),
    conda:
        CONDA_ENV
    shell:
        "python -m rib {params.command} --threads {threads} > {log} 2>&1"


rule evaluate_finetuned:
    input:
        unpack(job_inputs("evaluate_finetuned")),
    output:
        expand(PAT["finetuned_cell"], eval=EVALS, allow_missing=True),
    log:
        f"{LOGS}/evaluate/{{model}}/{{method}}/{{dataset}}.log",
    benchmark:
        bench("evaluate_finetuned", "{model}/{method}/{dataset}")
    params:
        settings=PARAMS["evaluate"],
        command=job_command("evaluate_finetuned"),
    threads: THREADS
    resources:
        **job_resources("evaluate"),
    wildcard_constraints:
        method=train_regex(TRAIN_ENTRIES),
    conda:
        CONDA_ENV
    shell:
        "python -m rib {params.command} --threads {threads} > {log} 2>&1"


# Weight-space methods (WiSE-FT, soups, Model Stock): combine finished checkpoints of the same
# (model, D_ft) without training and evaluate the result(s); one job writes all its cells.
rule combine:
    input:
        unpack(job_inputs("combine")),
    output:
        expand(PAT["finetuned_cell"], eval=EVALS, allow_missing=True),
    log:
        f"{LOGS}/combine/{{model}}/{{method}}/{{dataset}}.log",
    benchmark:
        bench("combine", "{model}/{method}/{dataset}")
    params:
        settings=lambda w: rib_config.method_schedule(PARAMS, w.method),
        evaluate=PARAMS["evaluate"],
        command=job_command("combine"),
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
        "python -m rib {params.command} --threads {threads} > {log} 2>&1"
