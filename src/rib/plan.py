"""What a run of a params file will cost, before it runs (``rib plan``).

* Jobs per rule, from the job graph (:mod:`rib.jobs`): the jobs Snakemake schedules in a fresh
  workspace (tests check them against ``snakemake -n``).
* Images each job puts through a model: training (epochs x the fine-tuning part of D_ft, with each
  methods entry's own schedule), importance weights (EWC with the Fisher, MAS), evaluation (every
  image of every evaluation dataset, once per model a job evaluates), the held-out choices of a
  greedy soup, the features of a distance job.
* Disk: downloads and raw data, prepared manifests, image caches, checkpoints, and DVC's copy.
* Hours: those images over throughputs measured per model family (benchmarks/throughputs.yaml,
  each entry saying what measured it), or given with ``--throughput FAMILY=TRAIN,EVAL``.

Dataset sizes are the published ones (imagenet-rib) or follow from the ``synthetic`` settings
(rib-mini) until a dataset is prepared on disk with the params' split; then its manifest's counts are used.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from . import grid
from .errors import FormatError, RibError
from .jobs import Graph, Job

THROUGHPUTS = Path(__file__).resolve().parents[2] / "benchmarks" / "throughputs.yaml"

# Images of the real datasets as published; ImageNet-C: per corruption x severity (75 of them).
# A dataset prepared on disk is counted from its manifest instead.
REAL_IMAGES = {"imagenet": 50_000, "v2": 10_000, "a": 7_500, "r": 30_000, "sketch": 50_889,
               "objectnet": 18_574,  # the 113 classes that overlap ImageNet-1K
               "cartoon": 50_000, "drawing": 50_000, "c": 50_000}
REAL_RAW = {"objectnet": 50_000}  # in the raw folder, where more than are read (ObjectNet's 313 classes)
MANIFEST_ROW_BYTES = 120  # a line of manifest.csv, about (an ImageNet-C path is the longest)

# Model families that share a throughput: the architecture's compute, whatever the weights.
FAMILIES = (("vit_b16", r"vit_base_patch16|vit_b_16"), ("vit_b32", r"vit_base_patch32|vit_b_32"),
            ("resnet50", r"resnet50$|rn50$"))
RULES_WITHOUT_HOURS = ("generate", "generate_corpus", "fetch", "prepare", "prepare_corpus", "cache",
                       "fetch_weights", "aggregate", "figures", "usage")
WHAT = {"generate": "written", "generate_corpus": "written", "fetch": "unpacked", "prepare": "verified",
        "prepare_corpus": "verified", "cache": "decoded", "pretrain": "trained", "distance": "features",
        "evaluate_pretrained": "evaluated", "finetune": "trained", "combine": "evaluated",
        "evaluate_snapshots": "evaluated", "evaluate_finetuned": "evaluated"}


class PlanError(RibError, ValueError):
    pass


# ----------------------------------------------------------------------------------------------
# Jobs
# ----------------------------------------------------------------------------------------------
# Snakemake's order of rules in its job stats (rib plan's rows).
RULE_ORDER = ("generate", "generate_corpus", "fetch", "prepare", "prepare_corpus", "cache", "pretrain", "fetch_weights",
              "distance", "evaluate_pretrained", "evaluate_snapshots", "finetune", "combine", "evaluate_finetuned",
              "aggregate", "figures", "usage")


def jobs(params: dict) -> list[Job]:
    """Every job a fresh workspace runs (the job graph's, rib.jobs), in the order of Snakemake's job stats."""
    return sorted(Graph(params).jobs(), key=lambda job: RULE_ORDER.index(job.rule))


def job_counts(params: dict) -> dict[str, int]:
    counts: dict[str, int] = {}
    for job in jobs(params):
        counts[job.rule] = counts.get(job.rule, 0) + 1
    return counts


# ----------------------------------------------------------------------------------------------
# Dataset sizes
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetSize:
    name: str
    images: int      # every row of the prepared dataset: what evaluation and the image caches read
    finetune: int    # the fine-tuning part (a corpus: every image)
    heldout: int
    raw: int         # images in the raw folder (ImageNet-C before its subset; all of ObjectNet)
    counted: str     # where the numbers come from


def _synthetic_images(params: dict, spec) -> tuple[int, int]:
    """(raw, prepared) images of a rib-mini dataset, from the generator's settings."""
    from .data.synthetic.generate import images_per_class
    from .data.synthetic.shapes import SHAPES
    from .data.synthetic.suite import C_POOL_FACTOR, OBJECTNET_UNMAPPED

    n, classes = images_per_class(params, spec.name), len(spec.classes)
    if spec.is_corruption_tree:
        raw = len(spec.corruptions) * len(spec.severities) * classes * n
        subset = params["data"]["corruption_subset"]
        if not subset:
            return raw, raw
        # The subset keeps max(1, subset // classes) base images of each class, of a pool of
        # C_POOL_FACTOR * n; a leaf shows n of them: the expected share of the rows kept.
        return raw, min(raw, round(raw * max(1, subset // classes) / (C_POOL_FACTOR * n)))
    if spec.layout == "mapped_folders":  # folders of shapes outside the label space are not indexed
        unmapped = min(OBJECTNET_UNMAPPED, len(SHAPES) - params["synthetic"]["num_classes"])
        return (classes + unmapped) * n, classes * n
    return classes * n, classes * n


def _real_images(params: dict, spec, full, label_space: tuple[str, ...]) -> tuple[int, int]:
    """(raw, prepared) images of an imagenet-rib dataset from its published size; with data.classes
    (``spec`` restricted to them, ``full`` not), the share of its classes kept, or of the label space
    where its classes come from mapping files (ObjectNet)."""
    n = REAL_IMAGES.get(spec.name)
    if n is None:
        raise PlanError(f"dataset {spec.name!r}: its size is not known to rib plan; prepare it first "
                        "(rib data prepare) and plan again")
    chosen = params["data"].get("classes")
    if not spec.is_corruption_tree:
        share = len(spec.classes) / len(full.classes) if full.classes else \
            len(set(chosen)) / len(label_space) if chosen else 1.0
        return REAL_RAW.get(spec.name, n), round(n * share)
    leaves, classes = len(spec.corruptions) * len(spec.severities), len(spec.classes)
    photos = n // len(full.classes)  # of a class, in every leaf (ImageNet val: 50)
    subset = params["data"]["corruption_subset"]
    kept = min(photos, max(1, subset // classes)) if subset else photos  # as manifest.corruption_subset
    return leaves * n, leaves * kept * classes


def _folder_images(spec, label_space: tuple[str, ...], root: Path) -> tuple[int, int]:
    """(raw, prepared) images of a dataset copied from a folder (a plugin's), counted in that folder."""
    from .data.layouts import LayoutError, index

    try:
        n = len(index(spec, root / spec.source.folder, label_space).records)
    except LayoutError as err:
        raise PlanError(f"dataset {spec.name!r}: {err}") from None
    return n, n


def _prepared(params: dict, spec, root: Path) -> DatasetSize | None:
    """A dataset's counts from its prepared folder, when it was prepared with this params' split."""
    from .io import read_json

    path = root / grid.data_dir(params, spec.name) / "info.json"
    if not path.exists():
        return None
    info = read_json(path)
    split = info.get("split") or {}
    by_photo = spec.photos if params["split"]["leak_free"] and spec.role != "corpus" else None
    subset = params["data"]["corruption_subset"] if spec.is_corruption_tree else None
    if (split.get("heldout_fraction"), split.get("seed"), split.get("by_photo"), info.get("corruption_per_leaf")) != \
            (params["split"]["heldout_fraction"], params["split"]["seed"], by_photo, subset):
        return None  # prepared with other settings: the pipeline prepares it again
    parts = info.get("parts") or {}
    return DatasetSize(spec.name, info["num_images"], parts.get("finetune", parts.get("train", 0)),
                       parts.get("heldout", 0), info.get("found_images", info["num_images"]),
                       f"prepared ({grid.data_dir(params, spec.name)})")


def dataset_sizes(params: dict, root: str | Path = ".") -> dict[str, DatasetSize]:
    """Every dataset the grid prepares: from disk where prepared, else published or generated sizes
    with the held-out part estimated as round(heldout_fraction x images)."""
    from .data.suites import get_suite

    suite = get_suite(params)
    full = get_suite({**params, "data": {**params["data"], "classes": None}}) if params["data"].get("classes") \
        else suite
    out = {}
    for name in grid.datasets_to_prepare(params):
        spec = suite.dataset(name)
        found = _prepared(params, spec, Path(root))
        if found is None and spec.source is not None and spec.source.folder:  # a plugin's folder
            raw, images = _folder_images(spec, suite.label_space, Path(root))
            held = round(params["split"]["heldout_fraction"] * images)
            found = DatasetSize(name, images, images - held, held, raw, f"files in {spec.source.folder}")
        if found is None:
            raw, images = _synthetic_images(params, spec) if suite.synthetic else \
                _real_images(params, spec, full.dataset(name), suite.label_space)
            held = 0 if spec.role == "corpus" else round(params["split"]["heldout_fraction"] * images)
            counted = "synthetic settings" if suite.synthetic else "published size" + (
                ", share of data.classes" if params["data"].get("classes") else "")
            found = DatasetSize(name, images, images - held, held, raw, counted)
        out[name] = found
    return out


# ----------------------------------------------------------------------------------------------
# Throughputs
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Throughput:
    family: str
    train: float          # full fine-tuning: training images per second
    eval: float           # evaluation images per second
    source: str           # what measured it, in one line
    gpu: bool | None      # None: not said (a --throughput value)
    date: str = ""
    methods: dict = field(default_factory=dict)  # implementation -> its numbers, measured with FT's

    def method(self, impl: str, key: str) -> float | None:
        value = self.methods.get(impl, {}).get(key)
        return float(value) if value else None


def family(spec) -> str:
    """The throughput family of a model (``vit_b16``; rib-mini: ``mini_vit``, ``mini_resnet``)."""
    if spec.pretrain_corpus:
        return spec.name.partition(".")[0]
    arch = spec.arch.removeprefix("open_clip:")
    if ":" in arch:  # an open_clip model folder (local-dir:PATH): the model's own name
        return spec.name
    arch = arch.split(".")[0].lower().replace("-", "_")
    return next((name for name, pattern in FAMILIES if re.match(pattern, arch)), arch)


def load_throughputs(path: str | Path) -> list[Throughput]:
    """The measurements of a throughputs file (a missing file has none)."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise FormatError(f"{path}: not valid YAML: {err}") from None
    out = []
    for i, m in enumerate(data.get("measurements") or []):
        where = f"{path}: measurements[{i}]"
        try:
            ft = m["methods"]["ft"]
            train, evaluate = float(ft["train_img_per_s"]), 100.0 / float(ft["s_per_100_eval_images"])
            source = f"{m['script']} on {m['device']}, {m['date']}, batch {m['batch']}, {m['precision']}"
            out.append(Throughput(str(m["family"]), train, evaluate, source, bool(m["gpu"]), str(m["date"]),
                                  dict(m["methods"])))
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as err:
            raise FormatError(f"{where}: expected family, device, gpu, script, date, batch, precision and "
                              f"methods.ft with train_img_per_s and s_per_100_eval_images (missing or bad: {err})"
                              ) from None
    return out


def parse_override(text: str, families: Iterable[str]) -> Throughput:
    """``FAMILY=TRAIN_IMG_S,EVAL_IMG_S`` (a ``--throughput`` value)."""
    families = sorted(set(families))
    name, eq, rates = text.partition("=")
    parts = rates.split(",")
    try:
        train, evaluate = (float(p) for p in parts) if len(parts) == 2 else (math.nan, math.nan)
    except ValueError:
        train = evaluate = math.nan
    if not eq or not name.strip() or not (train > 0 and evaluate > 0 and math.isfinite(train + evaluate)):
        raise PlanError(f"--throughput {text!r}: expected FAMILY=TRAIN_IMG_S,EVAL_IMG_S, two positive numbers of "
                        f"images per second, e.g. {families[0] if families else 'vit_b16'}=400,2500")
    if name.strip() not in families:
        raise PlanError(f"--throughput {text!r}: no model of the grid is of family {name.strip()!r}; "
                        f"its families: {', '.join(families)}")
    return Throughput(name.strip(), train, evaluate, f"--throughput {text}", None)


def choose(measured: list[Throughput], fam: str) -> Throughput | None:
    """A family's measurement: a GPU one over a CPU one, then the newest."""
    mine = [m for m in measured if m.family == fam]
    return max(mine, key=lambda m: (bool(m.gpu), m.date), default=None)


class Costs:
    """Seconds of training and evaluation per image for one family, from its throughput. A method
    not measured with it takes FT's rate scaled by the ratio another measurement found (the same
    family first); methods sharing an implementation class share their numbers."""

    def __init__(self, tp: Throughput, measured: list[Throughput]):
        self.tp = tp
        self.others = sorted((m for m in measured if m is not tp), key=lambda m: m.family != tp.family)

    def _lookup(self, impl: str, key: str) -> tuple[float, Throughput] | None:
        from .methods import METHODS

        target = METHODS[impl].target
        names = [impl] + [n for n, i in METHODS.items() if i.target == target and n != impl]
        for m in [self.tp, *self.others]:
            for name in names:
                value = m.method(name, key)
                if value is not None:
                    return value, m
        return None

    def train_s(self, impl: str) -> float:
        found = self._lookup(impl, "train_img_per_s")  # as a share of FT's rate where it was measured
        return 1 / self.tp.train if found is None else found[1].train / (found[0] * self.tp.train)

    def importance_s(self, impl: str) -> float:
        found = self._lookup(impl, "importance_s_per_image")  # relative to one FT training image
        return 1 / self.tp.train if found is None else found[0] * found[1].train / self.tp.train

    def feature_s(self, impl: str) -> float:
        found = self._lookup(impl, "feature_s_per_image")  # relative to one evaluated image
        return 1 / self.tp.eval if found is None else found[0] * found[1].eval / self.tp.eval

    @property
    def eval_s(self) -> float:
        return 1 / self.tp.eval


# ----------------------------------------------------------------------------------------------
# The plan
# ----------------------------------------------------------------------------------------------
@dataclass
class Row:
    rule: str
    method: str | None = None
    jobs: int = 0
    images: int = 0
    per_job: list[int] = field(default_factory=list)  # [fewest, most] images of one job
    seconds: float | None = 0.0

    def add(self, images: int, seconds: float | None) -> None:
        self.jobs += 1
        self.images += images
        self.per_job = [min(self.per_job[0], images), max(self.per_job[1], images)] if self.per_job else [images] * 2
        self.seconds = None if seconds is None or self.seconds is None else self.seconds + seconds


@dataclass
class DiskItem:
    item: str
    bytes: int
    unknown: list[str] = field(default_factory=list)  # parts whose size is not known
    note: str = ""
    dvc: bool = False        # DVC keeps a copy in its cache
    transient: bool = False  # exists only while jobs run; not in the total


@dataclass
class Plan:
    params_file: str
    suite: str
    datasets: dict[str, DatasetSize]
    rules: list[Row]
    methods: list[Row]
    disk: list[DiskItem]
    throughputs: dict[str, Throughput | None]
    dvc_cache_type: str | None
    notes: list[str]

    @property
    def disk_total(self) -> int:
        return sum(d.bytes for d in self.disk if not d.transient)

    @property
    def dvc_copy(self) -> int:
        return 0 if _dvc_links(self.dvc_cache_type) else sum(d.bytes for d in self.disk if d.dvc)

    def hours(self) -> float | None:
        timed = [r.seconds for r in self.rules if r.rule not in RULES_WITHOUT_HOURS]
        return None if any(s is None for s in timed) else sum(timed) / 3600

    def as_dict(self) -> dict:
        def row(r: Row) -> dict:
            timed = r.rule not in RULES_WITHOUT_HOURS
            return {"rule": r.rule, **({"method": r.method} if r.method else {}), "jobs": r.jobs,
                    "images": r.images, "images_per_job": r.per_job, "what": WHAT.get(r.rule),
                    "hours": (None if r.seconds is None else r.seconds / 3600) if timed else None}

        return {"params": self.params_file, "suite": self.suite, "workspace": "fresh",
                "datasets": {k: asdict(v) for k, v in self.datasets.items()},
                "jobs": {r.rule: r.jobs for r in self.rules},
                "rules": [row(r) for r in self.rules], "methods": [row(r) for r in self.methods],
                "total": {"jobs": sum(r.jobs for r in self.rules), "hours": self.hours(),
                          "disk_bytes": self.disk_total, "dvc_copy_bytes": self.dvc_copy},
                "disk": [asdict(d) for d in self.disk], "dvc_cache_type": self.dvc_cache_type,
                "throughputs": {f: None if t is None else {"train_img_per_s": t.train, "eval_img_per_s": t.eval,
                                                           "measured_by": t.source, "gpu": t.gpu}
                                for f, t in self.throughputs.items()},
                "notes": self.notes}


def _checkpoint_bytes(params: dict, model: str) -> int | None:
    """Bytes of a model's weights as a checkpoint holds them (float32), from the architecture with
    random weights: on the meta device (nothing allocated), else on the CPU (open_clip moves its model
    to a device, which meta tensors cannot do); nothing is downloaded. None: it cannot be built."""
    import torch

    from .data.suites import get_suite
    from .models import network
    from .models.registry import get_model

    spec, classes = get_model(model, params), len(get_suite(params).label_space)
    logging.disable(logging.WARNING)  # open_clip's "no pretrained weights loaded": none are wanted
    try:
        for device in ("meta", "cpu"):
            try:
                with torch.device(device):
                    net = network.build(spec, classes)
            except Exception:  # any failure to build: the plan says "unknown"
                continue
            return sum(t.numel() * t.element_size() for t in net.state_dict().values())
        return None
    finally:
        logging.disable(logging.NOTSET)


def _trained_images(n: int, epochs: int, batch: int) -> int:
    """Images of ``epochs`` over ``n`` (rib.train.fit drops a last batch of one image)."""
    return epochs * (n - 1 if n % batch == 1 else n) if n >= 2 else 0


def _dvc_cache_type(root: Path) -> str | None:
    """DVC's ``cache.type`` in the workspace's .dvc/config (or config.local); None: not set."""
    value = None
    for name in ("config", "config.local"):
        path = root / ".dvc" / name
        section = None
        for line in path.read_text().splitlines() if path.exists() else []:
            s = line.strip()
            if s.startswith("["):
                section = s.strip("[]").strip("'\" ")
            elif section == "cache" and s.partition("=")[0].strip() == "type":
                value = s.partition("=")[2].strip()
    return value


def _dvc_links(cache_type: str | None) -> bool:
    """Whether DVC links its cache into the workspace instead of copying (no second copy): a hard or
    symbolic link comes before any copy among its choices (DVC takes the first the file system allows,
    and every file system allows a symlink)."""
    types = [t.strip() for t in (cache_type or "").split(",")]
    before_copy = types[:types.index("copy")] if "copy" in types else types
    return any(t in ("hardlink", "symlink") for t in before_copy)


def _features_once(params: dict, entry: str) -> bool:
    """Whether a method trains its head on features computed once (linear probing)."""
    import importlib

    from .methods import entry_info

    module, cls = entry_info(params, entry).target.split(":")
    return getattr(importlib.import_module(module), cls).head_on_features


def _job_cost(params: dict, job: Job, sizes: dict[str, DatasetSize],
              eval_images: int) -> tuple[int, Callable[[Costs], float] | None]:
    """(images the job puts through a model, its seconds given its family's Costs; None: not timed)."""
    from .config import method_schedule
    from .methods import ingredients
    from .models.registry import get_model

    d = sizes.get(job.dataset) if job.dataset else None
    if job.rule in ("generate", "generate_corpus", "fetch"):
        return d.raw, None
    if job.rule in ("prepare", "prepare_corpus", "cache"):
        return d.images, None
    if job.rule == "pretrain":
        pre, corpus = params["pretrain"], get_model(job.model, params).pretrain_corpus
        n = _trained_images(sizes[corpus].finetune, pre["epochs"][corpus], pre["batch_size"])
        return n, lambda c: n * c.train_s("ft")
    if job.rule == "distance":
        samples = params["distance"]["samples"]
        n = min(samples, sizes[grid.distance_reference(params)].images) + min(samples, d.finetune)
        return n, lambda c: n * c.eval_s
    if job.rule in ("evaluate_pretrained", "evaluate_finetuned"):
        return eval_images, lambda c: eval_images * c.eval_s
    if job.rule == "evaluate_snapshots":  # each snapshot on every evaluation dataset
        from .config import snapshot_epochs

        n = len(snapshot_epochs(params, get_model(job.model, params).pretrain_corpus)) * eval_images
        return n, lambda c: n * c.eval_s
    if job.rule == "finetune":
        config = method_schedule(params, job.method)
        impl = config["method"]
        ref = grid.reference_dataset(params, job.model, job.method)
        extra = min(int(config["samples"]), sizes[ref].images) if ref else 0  # importance weights' images
        if _features_once(params, job.method):  # the frozen backbone once over the images; the head is cheap
            n = d.finetune
            return n + extra, lambda c: n * c.feature_s(impl) + extra * c.importance_s(impl)
        n = _trained_images(d.finetune, int(config["epochs"]), int(config["batch_size"]))
        return n + extra, lambda c: n * c.train_s(impl) + extra * c.importance_s(impl)
    if job.rule == "combine":
        config = method_schedule(params, job.method)
        n = len(config.get("alphas", [None])) * eval_images  # WiSE-FT: one model per alpha of its sweep
        if config["method"] == "greedy_soup":  # each ingredient alone, then each candidate soup, on held-out D_ft
            n += (2 * len(ingredients(params, job.method)) - 1) * d.heldout
        return n, lambda c: n * c.eval_s
    return 0, None


def _disk(params: dict, sizes: dict[str, DatasetSize], tuned: list[Job], root: Path) -> list[DiskItem]:
    from .config import method_schedule
    from .data.suites import get_suite
    from .models.registry import get_model, preprocessing_of

    suite = get_suite(params)
    out: list[DiskItem] = []
    if suite.synthetic:
        raw = 0
        for name, d in sizes.items():
            folder = root / grid.data_dir(params, name, "raw")
            if folder.is_dir():
                raw += sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            else:  # the uncompressed pixels (the PNGs of these shapes are about 2/3 of it)
                raw += d.raw * 3 * params["synthetic"]["image_size"] ** 2
        out.append(DiskItem("raw data (generated)", raw, dvc=True))
    else:
        archives, unknown = 0, []
        for name in sizes:
            source = suite.dataset(name).source
            files = source.archives if source else ()
            if not files or any(a.size is None for a in files):
                unknown.append(name)
            archives += sum(a.size or 0 for a in files)
        out.append(DiskItem(f"downloaded archives ({params['data']['downloads']}/)", archives, unknown,
                            "kept after unpacking: resumable, checksum-verified"))
        out.append(DiskItem("raw data, unpacked", archives, unknown,
                            "about the archives' sizes: JPEGs do not compress", dvc=True))
    out.append(DiskItem("prepared manifests", sum(d.images for d in sizes.values()) * MANIFEST_ROW_BYTES,
                        note=f"about {MANIFEST_ROW_BYTES} B per image", dvc=True))
    caches = grid.cache_jobs(params)
    if caches:
        sides = {grid.prep_key(params, m): preprocessing_of(get_model(m, params)).input_size
                 for m in params["grid"]["models"]}
        out.append(DiskItem(f"image caches ({len(sides)} preprocessing(s) x {len(grid.eval_datasets(params))} "
                            "datasets)", sum(sizes[d].images * 3 * sides[k] ** 2 for k, d in caches),
                            note="uint8, 3 x side^2 bytes per image", dvc=True))
    weights = {m: _checkpoint_bytes(params, m) for m in params["grid"]["models"]}
    unknown = [m for m, b in weights.items() if b is None]
    out.append(DiskItem(f"pretrained checkpoints ({len(weights)})", sum(b or 0 for b in weights.values()), unknown,
                        "float32 weights", dvc=True))
    out.append(DiskItem(f"fine-tuned checkpoints ({len(tuned)})", sum(weights[j.model] or 0 for j in tuned),
                        unknown, "one per finetune job, float32 weights", dvc=True))
    if grid.weight_entries(params):
        out.append(DiskItem("weight-space models (combine)", 0, note="built in memory and evaluated; none saved"))
    if tuned:  # weights and optimizer buffers (momentum: one per weight, AdamW: two)
        buffers = max(2 if method_schedule(params, e)["optimizer"] == "adamw" else 1
                      for e in grid.train_entries(params))
        out.append(DiskItem("resume state per running finetune job",
                            (1 + buffers) * max(weights[j.model] or 0 for j in tuned),
                            note="weights and optimizer state; deleted when the job ends", transient=True))
    return out


def make_plan(params: dict, params_file: str = "params.yaml", *, overrides: Iterable[str] = (),
              throughputs_file: str | Path | None = None, root: str | Path = ".") -> Plan:
    """The plan of a validated params file; ``root``: the workspace (prepared data, .dvc/config)."""
    from .data.suites import get_suite
    from .models.registry import get_model

    root = Path(root)
    sizes = dataset_sizes(params, root)
    eval_images = sum(sizes[d].images for d in grid.eval_datasets(params))
    fam = {m: family(get_model(m, params)) for m in params["grid"]["models"]}
    measured = load_throughputs(throughputs_file or THROUGHPUTS)
    given = {t.family: t for t in (parse_override(o, fam.values()) for o in overrides)}
    chosen = {f: given.get(f) or choose(measured, f) for f in dict.fromkeys(fam.values())}
    costs = {f: Costs(t, measured) for f, t in chosen.items() if t is not None}

    every = jobs(params)
    rules: dict[str, Row] = {}
    methods: dict[tuple[str, str], Row] = {}
    for job in every:
        images, seconds = _job_cost(params, job, sizes, eval_images)
        c = costs.get(fam[job.model]) if job.model else None
        secs = seconds(c) if seconds and c else None
        rules.setdefault(job.rule, Row(job.rule)).add(images, secs)
        if job.rule in ("finetune", "combine"):
            methods.setdefault((job.rule, job.method), Row(job.rule, job.method)).add(images, secs)

    notes = [f"no throughput measured for family {f}: its hours are unknown; pass --throughput "
             f"{f}=TRAIN_IMG_S,EVAL_IMG_S or measure it" for f, t in chosen.items() if t is None]
    on_cpu = [f for f, t in chosen.items() if t is not None and t.gpu is False]
    if on_cpu:
        notes.append(f"{', '.join(on_cpu)}: no GPU measurement exists, so these hours are CPU hours at the "
                     "measured CPU rate, not GPU-hours. Pass --throughput FAMILY=TRAIN_IMG_S,EVAL_IMG_S (images/s "
                     "on your GPU) or run `bash benchmarks/gpu.sh`, which records its numbers in "
                     "benchmarks/throughputs.yaml")
    if "finetune" in rules and any(t is not None and not t.methods for t in chosen.values()):
        notes.append("methods other than FT take FT's given rate scaled by their measured ratio to it (the CPU "
                     "table where no other measurement has them)")
    if any(_features_once(params, e) for e in grid.train_entries(params)):
        notes.append("linear probing (features once) counts one pass of the frozen backbone over the fine-tuning "
                     "part; its head then trains on the features in negligible time")
    notes.append("evaluation runs the model on every image of D_ft too; only its held-out part is reported")
    notes.append("distance hours are the feature passes only; the OT solve adds about 45 s per job on 2 CPU "
                 "cores at paper scale (benchmarks/otdd.py)")
    disk = _disk(params, sizes, [j for j in every if j.rule == "finetune"], root)
    return Plan(params_file, get_suite(params).name, sizes, list(rules.values()), list(methods.values()), disk,
                chosen, _dvc_cache_type(root), notes)


# ----------------------------------------------------------------------------------------------
# Text
# ----------------------------------------------------------------------------------------------
def report(params: dict, params_file: str = "params.yaml", overrides: Iterable[str] = (),
           throughputs_file: str | Path | None = None, *, json_out: bool = False) -> str:
    """``rib plan``: the plan as text, or as JSON."""
    import json

    made = make_plan(params, params_file, overrides=overrides, throughputs_file=throughputs_file)
    return json.dumps(made.as_dict(), indent=1) if json_out else render(made)


def size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def _hours(seconds: float | None, timed: bool) -> str:
    if not timed:
        return "-"
    if seconds is None:
        return "?"
    h = seconds / 3600
    return f"{h:,.0f}" if h >= 100 else f"{h:.1f}" if h >= 1 else f"{h:.2g}"


def _span(r: Row) -> str:
    lo, hi = r.per_job or [0, 0]
    if hi == 0:
        return "-"
    return f"{lo:,}" if lo == hi else f"{lo:,}-{hi:,}"


def render(plan: Plan) -> str:
    out = [f"rib plan: {plan.params_file} (suite {plan.suite}), jobs for a fresh workspace", ""]
    out.append("Datasets (images)")
    out.append(f"  {'dataset':<12}{'images':>12}{'fine-tuning':>14}{'held-out':>12}  counted from")
    for d in plan.datasets.values():
        out.append(f"  {d.name:<12}{d.images:>12,}{d.finetune:>14,}{d.heldout:>12,}  {d.counted}")
    out.append("")
    gpu = all(t is not None and t.gpu for t in plan.throughputs.values())
    out.append(f"Jobs ({'GPU-hours' if gpu else 'hours'} at the throughputs below)")
    out.append(f"  {'rule':<22}{'jobs':>6}{'images per job':>22}{'images':>16}  {'':<10}{'hours':>9}")
    rows = []
    for r in plan.rules:
        rows.append((r, r.rule))
        rows += [(m, f"  {m.method}") for m in plan.methods if m.rule == r.rule]
    for r, label in rows:
        timed = r.rule not in RULES_WITHOUT_HOURS
        out.append(f"  {label:<22}{r.jobs:>6}{_span(r):>22}{(f'{r.images:,}' if r.images else '-'):>16}  "
                   f"{WHAT.get(r.rule, ''):<10}{_hours(r.seconds, timed):>9}")
    total = plan.hours()
    out.append(f"  {'total':<22}{sum(r.jobs for r in plan.rules):>6}{'':>38}  {'':<10}"
               f"{_hours(None if total is None else total * 3600, True):>9}")
    out.append("")
    out.append("Disk")
    for d in plan.disk:
        amount = size(d.bytes) + (f" + ? ({', '.join(d.unknown)})" if d.unknown else "")
        note = f"  ({d.note})" if d.note else ""
        out.append(f"  {d.item:<52}{amount:>12}{note}")
    unknown = any(d.unknown for d in plan.disk if not d.transient)
    out.append(f"  {'total' + (' (at least: sizes marked ? are not known)' if unknown else ''):<52}"
               f"{size(plan.disk_total):>12}")
    if plan.dvc_copy:
        how = f"cache.type {plan.dvc_cache_type}" if plan.dvc_cache_type else \
            "cache.type not set: DVC reflinks where the filesystem can, else copies"
        out.append(f"  {'with DVC (dvc repro): a copy in .dvc/cache':<52}{'+ ' + size(plan.dvc_copy):>12}"
                   f"  (raw data, manifests, checkpoints; {how})")
    else:
        out.append(f"  with DVC (dvc repro): .dvc/cache links its files (cache.type {plan.dvc_cache_type}): no copy")
    out.append("")
    out.append("Throughputs (images/s)")
    for f, t in plan.throughputs.items():
        if t is None:
            out.append(f"  {f}: none measured")
        else:
            where = "GPU" if t.gpu else ("CPU" if t.gpu is False else "given")
            out.append(f"  {f}: train {t.train:,.4g}, eval {t.eval:,.4g} ({where}: {t.source})")
    out.append("")
    out += [f"Note: {n}" for n in plan.notes]
    return "\n".join(out)
