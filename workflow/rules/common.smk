# Shared set-up: load and validate the configuration through rib, name the grid and its paths.
import os
import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake_interface_executor_plugins.settings import DeploymentMethod

SRC = str(Path(workflow.basedir) / "src")
sys.path.insert(0, SRC)

from rib import config as rib_config  # noqa: E402
from rib import grid as rib_grid  # noqa: E402
from rib.data.suites import get_suite  # noqa: E402
from rib.models.registry import get_model, model_slug  # noqa: E402

# The params file is the single configuration: the one given with --configfile, else params.yaml.
PARAMS_FILE = os.path.relpath(workflow.overwrite_configfiles[-1]) if workflow.overwrite_configfiles else "params.yaml"
try:
    PARAMS = rib_config.load(PARAMS_FILE)
except rib_config.ConfigError as err:
    raise WorkflowError(str(err)) from None

SUITE = get_suite(PARAMS)
EVALS = rib_grid.eval_datasets(PARAMS)
THREADS = PARAMS["runtime"]["threads"]
PAT = {kind: pattern.replace("{suite}", SUITE.name) for kind, pattern in rib_grid.PATTERNS.items()}
LOGS = f"logs/{SUITE.name}"

# Every rule runs `python -m rib` from this checkout's src/ (also inside --use-conda environments)
# and reads the params file named by RIB_PARAMS. Without conda, `python` is the interpreter running
# Snakemake, so an activated virtual environment is not required. (Snakemake formats the prefix
# too, hence the doubled braces.)
_conda = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
_path = "" if _conda else f'export PATH="{os.path.dirname(sys.executable)}:$PATH"; '
shell.prefix(f'{_path}export PYTHONPATH="{SRC}${{{{PYTHONPATH:+:$PYTHONPATH}}}}"; export RIB_PARAMS="{PARAMS_FILE}"; ')
CONDA_ENV = "../envs/rib.yaml"

wildcard_constraints:
    dataset="|".join(sorted(SUITE.datasets)),
    eval="|".join(sorted(SUITE.datasets)),
    model="|".join(re.escape(model_slug(m)) for m in PARAMS["grid"]["models"]),
    method="|".join(PARAMS["grid"]["methods"]),


def prepared(dataset):
    return rib_grid.data_dir(PARAMS, dataset)


def corpus_of(wildcards):
    corpus = get_model(wildcards.model, PARAMS).pretrain_corpus
    if corpus is None:
        raise WorkflowError(f"model {wildcards.model} is not pretrained by the pipeline")
    return prepared(corpus)


EVAL_NAMES = "|".join(sorted(SUITE.names("source") + SUITE.names("shift")))
CORPUS_NAMES = "|".join(sorted(SUITE.names("corpus")))


REPORT_OUTPUTS = [PAT[k] for k in ("cells", "metrics", "summary", "summary_md", "methods_summary", "radar", "bar")]
