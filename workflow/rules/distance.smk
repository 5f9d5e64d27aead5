# Dataset distance: OTDD between the pretraining-domain data and each fine-tuning dataset, on the
# pretrained model's pre-logit features (one job per model and D_ft).


rule distance:
    input:
        unpack(job_inputs("distance")),
    output:
        PAT["distance"],
    log:
        f"{LOGS}/distance/{{model}}/{{dataset}}.log",
    benchmark:
        bench("distance", "{model}/{dataset}")
    params:
        settings=PARAMS["distance"],
        command=job_command("distance"),
    threads: THREADS
    resources:
        **job_resources("distance"),
    conda:
        CONDA_ENV
    shell:
        "python -m rib {params.command} --threads {threads} > {log} 2>&1"
