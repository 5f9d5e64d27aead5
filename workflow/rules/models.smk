# Pretrained models: rib-mini trains its small timm models from scratch on a synthetic corpus;
# real suites fetch published weights once into models/<suite>/ (a local rule: it needs internet).

if SUITE.synthetic:

    rule pretrain:
        input:
            data=corpus_of,
        output:
            PAT["pretrained"],
        log:
            f"{LOGS}/pretrain/{{model}}.log",
        benchmark:
            bench("pretrain", "{model}")
        params:
            schedule=PARAMS.get("pretrain"),
            seed=PARAMS["seed"],
            state=PAT["pretrain_state"],  # resume state: not an output, so a failed job keeps it
        threads: THREADS
        resources:
            **job_resources("pretrain"),
        conda:
            CONDA_ENV
        shell:
            "exec python -m rib pretrain {wildcards.model} --data {input.data} --out {output} --state {params.state} "
            "--threads {threads} > {log} 2>&1"

else:

    rule fetch_weights:
        output:
            PAT["pretrained"],
        log:
            f"{LOGS}/fetch_weights/{{model}}.log",
        params:
            local=lambda w: (PARAMS.get("local_models") or {}).get(w.model),  # its file and settings
        localrule: True
        conda:
            CONDA_ENV
        shell:
            "python -m rib models fetch {wildcards.model} --out {output} > {log} 2>&1"
