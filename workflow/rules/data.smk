# Datasets: generate (a synthetic suite's own) or fetch (real suites; a plugin's dataset, copied from
# its folder) -> prepare (index, verify, split).
# generate and fetch are local rules (on a cluster: the login node, which has internet); prepare
# runs as a cluster job.
# Evaluation datasets live under data/<suite>/{raw,prepared}/, pretraining corpora under
# data/<suite>/corpora/{raw,prepared}/.
FETCHED = sorted(d for d in SUITE.names("source") + SUITE.names("shift") if not GRAPH.generated(d))
GENERATED = sorted(d for d in SUITE.names("source") + SUITE.names("shift") if GRAPH.generated(d))

if SUITE.synthetic:

    rule generate:
        output:
            directory(PAT["raw"]),
        log:
            f"{LOGS}/generate/{{dataset}}.log",
        params:
            settings=lambda w: {"seed": PARAMS["seed"], "synthetic": PARAMS["synthetic"]},
            command=job_command("generate"),
        threads: 1
        localrule: True  # the synthetic suite's "download": seconds, on the machine running Snakemake
        wildcard_constraints:
            dataset="|".join(map(re.escape, GENERATED)),
        conda:
            CONDA_ENV
        shell:
            "python -m rib {params.command} > {log} 2>&1"

    use rule generate as generate_corpus with:
        output:
            directory(PAT["corpus_raw"]),
        wildcard_constraints:
            dataset=CORPUS_NAMES,

    localrules:
        generate_corpus,  # `use rule` does not carry localrule over

if FETCHED:
    # Say up front what is missing, and what a person has to do for the manual datasets.
    _missing = [d for d in EVALS if d in FETCHED and not os.path.exists(PAT["raw"].format(dataset=d))]
    if _missing:
        from rib.data.fetch import manual_instructions

        _folder = [d for d in _missing if SUITE.dataset(d).source.folder]
        _manual = [d for d in _missing if SUITE.dataset(d).source.manual and d not in _folder]
        _auto = [d for d in _missing if d not in _manual and d not in _folder]
        _lines = [f"rib: {SUITE.name}: {len(_missing)} dataset(s) not on disk yet."]
        if _auto:
            _lines.append(f"  to download (rule fetch, needs internet): {', '.join(_auto)}")
        for _d in _folder:
            _lines.append(f"  to copy (rule fetch): {_d} from {SUITE.dataset(_d).source.folder}")
        for _d in _manual:
            _lines.append(f"  to add by hand: {_d}: {manual_instructions(SUITE.dataset(_d), PARAMS_FILE)}")
        print("\n".join(_lines), file=sys.stderr)

    # Downloads need internet: a local rule, run on the machine Snakemake runs on (a cluster's
    # login node). A manual dataset (ImageNet val, ObjectNet) fails here with what to do, until
    # `rib data add NAME PATH` has put it in place.
    rule fetch:
        output:
            directory(PAT["raw"]),
        log:
            f"{LOGS}/fetch/{{dataset}}.log",
        params:
            downloads=PARAMS["data"]["downloads"],
            command=job_command("fetch"),
        localrule: True
        wildcard_constraints:
            dataset="|".join(map(re.escape, FETCHED)),
        conda:
            CONDA_ENV
        shell:
            "python -m rib {params.command} > {log} 2>&1"


rule prepare:
    input:
        unpack(job_inputs("prepare")),
    output:
        directory(PAT["prepared"]),
    log:
        f"{LOGS}/prepare/{{dataset}}.log",
    params:
        split=PARAMS["split"],
        data={k: PARAMS["data"][k] for k in ("skip_corrupt_images", "corruption_subset", "classes") if k in PARAMS["data"]},
        command=job_command("prepare"),
    threads: 1
    resources:
        **job_resources("prepare"),
    wildcard_constraints:
        dataset=EVAL_NAMES,
    conda:
        CONDA_ENV
    shell:
        "python -m rib {params.command} > {log} 2>&1"


if CORPUS_NAMES:

    use rule prepare as prepare_corpus with:
        output:
            directory(PAT["corpus_prepared"]),
        wildcard_constraints:
            dataset=CORPUS_NAMES,


# Each evaluation dataset decoded, resized and cropped once per preprocessing (the models' input
# size, interpolation and crop) into uint8 shards; every job of a model with that preprocessing
# reads them instead of decoding the images again (rib.data.cache). runtime.cache: false turns it off.
rule cache:
    input:
        unpack(job_inputs("cache")),
    output:
        directory(PAT["cache"]),
    log:
        f"{LOGS}/cache/{{prep}}/{{dataset}}.log",
    params:
        command=job_command("cache"),
    threads: max(1, PARAMS["runtime"]["loader_workers"])
    resources:
        **job_resources("cache"),
    wildcard_constraints:
        prep=PREP_KEYS,
        dataset=EVAL_NAMES,
    conda:
        CONDA_ENV
    shell:
        "python -m rib {params.command} > {log} 2>&1"
