# Fine-tuning one pretrained model on the fine-tuning part of one dataset with one training method.
# Resumable: the training state (state.pt beside the checkpoint) survives a killed job. LP-FT's
# starting checkpoint (its linear probe) and the pretraining-domain images of EWC and MAS are
# inputs, so the DAG supplies them.


rule finetune:
    input:
        unpack(finetune_extra_inputs),
        pretrained=PAT["pretrained"],
        data=lambda w: prepared(w.dataset),
    output:
        PAT["finetuned"],
    log:
        f"{LOGS}/finetune/{{model}}/{{method}}/{{dataset}}.log",
    params:
        schedule=lambda w: rib_config.method_schedule(PARAMS, w.method),
        seed=PARAMS["seed"],
        options=finetune_options,
    threads: THREADS
    wildcard_constraints:
        method=train_regex(TRAIN_ENTRIES),
    conda:
        CONDA_ENV
    shell:
        "python -m rib finetune {wildcards.model} {wildcards.method} {wildcards.dataset} "
        "--pretrained {input.pretrained} --data {input.data}{params.options} --out {output} "
        "--threads {threads} > {log} 2>&1"
