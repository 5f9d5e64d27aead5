# Fine-tuning one pretrained model on the fine-tuning part of one dataset with one training method.
# Resumable: the training state (state.pt, beside the checkpoint) is written after every epoch
# and, on SIGTERM (SLURM preemption, requeue, time limit), after the step in progress. It is not an
# output, so Snakemake keeps it when the job fails, and the requeued or retried job (the same
# command) resumes from it and ends with the weights of an unbroken run. `exec` makes rib the job's
# process, so a SIGTERM sent to the whole job step reaches rib and does not end the job's shell (and
# with it the job) before rib has saved. LP-FT's starting checkpoint (its linear probe) and the
# pretraining-domain images of EWC and MAS are inputs of the job (src/rib/jobs.py), so the DAG
# supplies them.


rule finetune:
    input:
        unpack(job_inputs("finetune")),
    output:
        PAT["finetuned"],
    log:
        f"{LOGS}/finetune/{{model}}/{{method}}/{{dataset}}.log",
    benchmark:
        bench("finetune", "{model}/{method}/{dataset}")
    params:
        schedule=lambda w: rib_config.method_schedule(PARAMS, w.method),
        seed=PARAMS["seed"],
        command=job_command("finetune"),
    threads: THREADS
    resources:
        **job_resources("finetune"),
    wildcard_constraints:
        method=train_regex(TRAIN_ENTRIES),
    conda:
        CONDA_ENV
    shell:
        "exec python -m rib {params.command} --threads {threads} > {log} 2>&1"
