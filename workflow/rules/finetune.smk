# Fine-tuning one pretrained model on the fine-tuning part of one dataset with one method.
# Resumable: the training state (state.pt beside the checkpoint) survives a killed job.


rule finetune:
    input:
        pretrained=PAT["pretrained"],
        data=lambda w: prepared(w.dataset),
    output:
        PAT["finetuned"],
    log:
        f"{LOGS}/finetune/{{model}}/{{method}}/{{dataset}}.log",
    params:
        schedule=lambda w: rib_config.method_schedule(PARAMS, w.method),
        seed=PARAMS["seed"],
    threads: THREADS
    conda:
        CONDA_ENV
    shell:
        "python -m rib finetune {wildcards.model} {wildcards.method} {wildcards.dataset} "
        "--pretrained {input.pretrained} --data {input.data} --out {output} --threads {threads} > {log} 2>&1"
