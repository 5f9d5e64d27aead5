# rib: ImageNet-RIB as a Snakemake workflow. Rules only call `rib` subcommands; all logic lives
# in src/rib. Run: snakemake --cores all   (another configuration: --configfile FILE)
from snakemake.utils import min_version

min_version("9.0")


configfile: "params.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/distance.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        REPORT_OUTPUTS,
        USAGE_OUTPUTS,  # time and memory of every job, per rule
        rebuild_targets,  # outputs found damaged and moved aside (workflow/rules/common.smk)
