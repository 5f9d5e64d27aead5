# Dataset distance: OTDD between the pretraining-domain data and each fine-tuning dataset, on the
# pretrained model's pre-logit features (one job per model and D_ft).


rule distance:
    input:
        pretrained=PAT["pretrained"],
        reference=prepared(rib_grid.distance_reference(PARAMS)),
        data=lambda w: prepared(w.dataset),
        cache=lambda w: caches(w.model, [rib_grid.distance_reference(PARAMS), w.dataset]),
    output:
        PAT["distance"],
    log:
        f"{LOGS}/distance/{{model}}/{{dataset}}.log",
    benchmark:
        bench("distance", "{model}/{dataset}")
    params:
        settings=PARAMS["distance"],
    threads: THREADS
    resources:
        **job_resources("distance"),
    conda:
        CONDA_ENV
    shell:
        "python -m rib distance {wildcards.model} {wildcards.dataset} --pretrained {input.pretrained} "
        "--reference-data {input.reference} --data {input.data} --cache {input.cache} --out {output} "
        "--threads {threads} > {log} 2>&1"
