# Pretrained models: rib-mini trains its small timm models from scratch on a synthetic corpus;
# real suites fetch published weights once into models/<suite>/ (a local rule: it needs internet).

if SUITE.synthetic:

    rule pretrain:
        input:
            unpack(job_inputs("pretrain")),
        output:
            PAT["pretrained"],
        log:
            f"{LOGS}/pretrain/{{model}}.log",
        benchmark:
            bench("pretrain", "{model}")
        params:
            schedule=PARAMS.get("pretrain"),
            seed=PARAMS["seed"],
            command=job_command("pretrain"),  # its resume state (beside the output) is not an output: a failed job keeps it
        threads: THREADS
        resources:
            **job_resources("pretrain"),
        conda:
            CONDA_ENV
        shell:
            "exec python -m rib {params.command} --threads {threads} > {log} 2>&1"

else:

    rule fetch_weights:
        output:
            PAT["pretrained"],
        log:
            f"{LOGS}/fetch_weights/{{model}}.log",
        params:
            local=lambda w: (PARAMS.get("local_models") or {}).get(w.model),  # its file and settings
            command=job_command("fetch_weights"),
        localrule: True
        conda:
            CONDA_ENV
        shell:
            "python -m rib {params.command} > {log} 2>&1"
