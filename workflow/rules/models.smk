# Pretrained models: rib-mini trains its small timm models from scratch on a synthetic corpus;
# real suites fetch published weights once into models/<suite>/ (a local rule: it needs internet),
# and so does any suite a plugin's model (from its local weights file, or timm's).
from rib.models.registry import get_model  # noqa: E402

PRETRAINED = [model_slug(m) for m in PARAMS["grid"]["models"] if get_model(m, PARAMS).pretrain_corpus]
FETCHED_MODELS = [model_slug(m) for m in PARAMS["grid"]["models"] if not get_model(m, PARAMS).pretrain_corpus]

if PRETRAINED:

    rule pretrain:
        input:
            unpack(job_inputs("pretrain")),
        output:
            PAT["pretrained"],
            # intermediate epochs, the baseline points of effective robustness (robustness.snapshots)
            *([directory(PAT["snapshots"])] if SNAPSHOT_MODELS else []),
        log:
            f"{LOGS}/pretrain/{{model}}.log",
        benchmark:
            bench("pretrain", "{model}")
        params:
            schedule=PARAMS.get("pretrain"),
            seed=PARAMS["seed"],
            snapshots=rib_config.robustness_settings(PARAMS)["snapshots"],  # which epochs are kept
            command=job_command("pretrain"),  # its resume state (beside the output) is not an output: a failed job keeps it
        threads: THREADS
        resources:
            **job_resources("pretrain"),
        wildcard_constraints:
            model="|".join(map(re.escape, PRETRAINED)),
        conda:
            CONDA_ENV
        shell:
            "exec python -m rib {params.command} --threads {threads} > {log} 2>&1"

if FETCHED_MODELS:

    rule fetch_weights:
        output:
            PAT["pretrained"],
        log:
            f"{LOGS}/fetch_weights/{{model}}.log",
        params:
            local=lambda w: (PARAMS.get("local_models") or {}).get(w.model),  # its file and settings
            command=job_command("fetch_weights"),
        localrule: True
        wildcard_constraints:
            model="|".join(map(re.escape, FETCHED_MODELS)),
        conda:
            CONDA_ENV
        shell:
            "python -m rib {params.command} > {log} 2>&1"
