"""The real datasets' path, on fabricated archives in each official layout served from loopback:
download (resumable, mirrored, verified) -> extract (safely) -> index -> split -> load, with every
image's label checked against the class map."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rib.data.archives import ArchiveError, extract
from rib.data.download import ChecksumError, DownloadError, download
from rib.data.fetch import ManualDatasetError, add, fetch
from rib.data.imagenet_rib import build_suite, timm_info
from rib.data.labels import LabelProjection
from rib.data.layouts import LayoutError
from rib.data.loading import open_dataset
from rib.data.manifest import DataError, load_prepared, prepare
from rib.data.suites import Archive, Source
from rib.config import load as load_params
from rib.errors import RibError
from rib.jobs import Graph
from rib.models.registry import Preprocessing
from tests.conftest import REPO, dry_run_jobs, job_counts, rib_env, run_rib

SUITE = build_suite()
WNIDS = SUITE.label_space
PREP = Preprocessing(32)


# ----------------------------------------------------------------------------------------------
# A loopback HTTP server with range requests, a dead mirror, and transfers that break off
# ----------------------------------------------------------------------------------------------
class Files(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    cut_once: set[str] = set()  # paths whose first transfer stops half-way
    no_range: set[str] = set()  # paths served as if the server ignored Range
    requests: list[tuple[str, str | None]] = []

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        path = self.path.split("?")[0]
        Files.requests.append((path, self.headers.get("Range")))
        if path not in self.files:
            self.send_error(404)
            return
        body = self.files[path]
        start = 0
        rng = self.headers.get("Range")
        if rng and path not in self.no_range:
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        chunk = body[start:]
        if path in self.cut_once:
            self.cut_once.discard(path)
            self.wfile.write(chunk[: len(chunk) // 2])
            self.wfile.flush()
            self.connection.shutdown(2)  # the connection drops mid-transfer
            return
        self.wfile.write(chunk)


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Files)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def serve(url_base: str, name: str, data: bytes) -> str:
    Files.files[f"/{name}"] = data
    return f"{url_base}/{name}"


# ----------------------------------------------------------------------------------------------
# Fabricated archives in the official layouts
# ----------------------------------------------------------------------------------------------
def jpeg(seed: int, size: int = 40, frame: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    img = (rng.uniform(60, 200, (size, size, 3))).astype(np.uint8)
    if frame:
        img[:frame], img[-frame:], img[:, :frame], img[:, -frame:] = (255, 0, 0), (255, 0, 0), (255, 0, 0), (255, 0, 0)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG" if frame else "JPEG", quality=90)
    return buf.getvalue()


def make_archive(fmt: str, files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    if fmt == "zip":
        with zipfile.ZipFile(buf, "w") as zf:
            for name, data in files.items():
                zf.writestr(name, data)
    else:
        with tarfile.open(fileobj=buf, mode="w:gz" if fmt == "tar.gz" else "w") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# The first classes of each dataset keep the fabricated archives small; the label space stays
# ImageNet-1K's 1000 wnids, so every label is checked against the real class maps.
LAYOUTS = {
    # dataset: (archive format, wrapper folder inside the archive, number of classes kept)
    "v2": ("tar.gz", "imagenetv2-matched-frequency-format-val", 12),
    "a": ("tar", "imagenet-a", 200),
    "r": ("tar", "imagenet-r", 10),
    "sketch": ("zip", "sketch", 10),
    "cartoon": ("tar.gz", "imagenet-cartoon", 10),
}


def fabricate(name: str, url_base: str, per_class: int = 3):
    fmt, wrapper, k = LAYOUTS[name]
    spec = SUITE.dataset(name)
    classes = spec.classes[:k]
    files = {f"{wrapper}/README.txt": b"fabricated for a test\n"}
    for ci, cls in enumerate(classes):
        for i in range(per_class):
            # the file name carries the class's wnid, so labels can be checked after loading
            files[f"{wrapper}/{cls.folder}/{cls.wnids[0]}_{i}.JPEG"] = jpeg(ci * 100 + i)
    data = make_archive(fmt, files)
    filename = f"{name}-test.{fmt}"
    url = serve(url_base, filename, data)
    archive = Archive(filename, (f"{url_base}/missing/{filename}", url), size=len(data), sha256=sha256(data))
    return dataclasses.replace(spec, classes=classes, source=Source((archive,))), data


def check_labels(prepared_dir: Path, classes) -> None:
    prepared = load_prepared(prepared_dir)
    assert prepared.classes == tuple(classes)
    for row in prepared.rows:
        wnid = Path(row.path).name.split("_")[0]
        assert prepared.classes[row.label].wnids == (wnid,), row.path
        assert wnid in WNIDS


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_fetch_prepare_load_in_each_layout(name, server, tmp_path):
    spec, _ = fabricate(name, server)
    raw, prepared_dir = tmp_path / "raw" / name, tmp_path / "prepared" / name
    info = fetch(spec, raw, downloads=tmp_path / "downloads", label_space=WNIDS, show_progress=False)
    assert info["images"] == 3 * len(spec.classes)
    assert (tmp_path / "downloads" / spec.source.archives[0].filename).exists()  # kept, verified
    out = prepare(spec, raw, prepared_dir, label_space=WNIDS, fraction=1 / 3, seed=0, show_progress=False)
    assert out["parts"] == {"finetune": 2 * len(spec.classes), "heldout": len(spec.classes)}  # stratified
    check_labels(prepared_dir, spec.classes)
    data = open_dataset(load_prepared(prepared_dir), "heldout", PREP, preload_images=True, show_progress=False)
    assert data.images.shape == (len(spec.classes), 3, 32, 32) and data.images.dtype == torch.uint8


def test_v2_numeric_folders_are_class_indices():
    v2 = SUITE.dataset("v2")
    assert [c.folder for c in v2.classes] == [str(i) for i in range(1000)]
    assert [c.wnids[0] for c in v2.classes] == list(WNIDS)


def test_class_maps_against_the_imagenet_wnid_list():
    assert len(WNIDS) == 1000 and len(set(WNIDS)) == 1000 and list(WNIDS) == sorted(WNIDS)
    for name in ("a", "r"):
        classes = SUITE.dataset(name).classes
        assert len(classes) == 200
        assert all(len(c.wnids) == 1 and c.wnids[0] in WNIDS and c.folder == c.wnids[0] for c in classes)
        assert sorted(c.wnids[0] for c in classes) == sorted(timm_info(f"imagenet_{name}_synsets.txt"))
    assert SUITE.dataset("a").classes != SUITE.dataset("r").classes
    for name in ("imagenet", "sketch", "cartoon", "drawing", "c"):
        assert [c.wnids[0] for c in SUITE.dataset(name).classes] == list(WNIDS)
    c = SUITE.dataset("c")
    assert len(c.corruptions) == 15 and c.severities == (1, 2, 3, 4, 5)


# ----------------------------------------------------------------------------------------------
# ObjectNet: mapping files from its archive, 113 classes, unmapped folders ignored, 2-pixel border
# ----------------------------------------------------------------------------------------------
def fabricate_objectnet(n_mapped: int = 113, n_unmapped: int = 2):
    rng = np.random.default_rng(0)
    # ImageNet class names in ILSVRC-2012 id order, and a shuffled map from model index to that id:
    # the parser must go name -> 2012 id -> model index -> wnid, not assume any order.
    order = rng.permutation(1000)  # order[pos] = 2012 id of the class at model index pos
    names_by_id = {int(order[pos]): f"class {WNIDS[pos]}" for pos in range(1000)}
    pytorch_to_2012 = {str(pos): int(order[pos]) for pos in range(1000)}
    chosen = rng.choice(1000, size=n_mapped + 1, replace=False)
    folder_label, label_names, expected = {}, {}, {}
    for k in range(n_mapped):
        folder, label = f"thing_{k:03d}", f"Thing {k}"
        positions = [int(chosen[k])] + ([int(chosen[-1])] if k == 0 else [])  # class 0 stands for two
        folder_label[folder] = label
        label_names[label] = "; ".join(f"class {WNIDS[p]}" for p in positions)
        expected[folder] = tuple(WNIDS[p] for p in positions)
    for k in range(n_unmapped):
        folder_label[f"other_{k}"] = f"Other {k}"  # an ObjectNet class with no ImageNet counterpart
    files = {
        "objectnet-1.0/mappings/folder_to_objectnet_label.json": json.dumps(folder_label).encode(),
        "objectnet-1.0/mappings/objectnet_to_imagenet_1k.json": json.dumps(label_names).encode(),
        "objectnet-1.0/mappings/pytorch_to_imagenet_2012_id.json": json.dumps(pytorch_to_2012).encode(),
        "objectnet-1.0/mappings/imagenet_to_label_2012_v2": "".join(names_by_id[i] + "\n" for i in range(1000)).encode(),
    }
    for folder in folder_label:
        for i in range(2):
            files[f"objectnet-1.0/images/{folder}/{i}.png"] = jpeg(len(files), frame=2)
    return make_archive("zip", files), expected


def test_objectnet_from_its_mapping_files(tmp_path):
    data, expected = fabricate_objectnet()
    (tmp_path / "objectnet-1.0.zip").write_bytes(data)
    spec = SUITE.dataset("objectnet")
    with pytest.raises(ManualDatasetError, match="rib data add objectnet PATH"):
        fetch(spec, tmp_path / "raw", downloads=tmp_path / "dl", label_space=WNIDS, show_progress=False)
    assert not (tmp_path / "raw").exists()
    add(spec, tmp_path / "objectnet-1.0.zip", tmp_path / "raw", label_space=WNIDS, show_progress=False)
    info = prepare(spec, tmp_path / "raw", tmp_path / "prepared", label_space=WNIDS, fraction=0.5, seed=0,
                   show_progress=False)
    assert info["num_classes"] == 113 and info["ignored_folders"] == ["other_0", "other_1"]
    prepared = load_prepared(tmp_path / "prepared")
    assert {c.folder: c.wnids for c in prepared.classes} == expected
    assert all(w in WNIDS for c in prepared.classes for w in c.wnids)
    # scored the usual way: an ObjectNet class's logit is the max over its ImageNet classes
    proj = LabelProjection(prepared.classes, WNIDS)
    two = next(i for i, c in enumerate(prepared.classes) if len(c.wnids) == 2)
    logits = torch.zeros(1, 1000)
    logits[0, WNIDS.index(prepared.classes[two].wnids[1])] = 5.0
    assert proj.restrict(logits).argmax(1).item() == two
    # the 2-pixel red border is cropped before the model's preprocessing
    images = open_dataset(prepared, None, PREP, preload_images=True, show_progress=False).images
    red = (images[:, 0] > 250) & (images[:, 1] < 5) & (images[:, 2] < 5)
    assert not red.any()


def test_objectnet_with_the_wrong_number_of_classes_is_refused(tmp_path):
    data, _ = fabricate_objectnet(n_mapped=50)
    (tmp_path / "on.zip").write_bytes(data)
    with pytest.raises(LayoutError, match="50 classes map onto the label space, expected 113"):
        add(SUITE.dataset("objectnet"), tmp_path / "on.zip", tmp_path / "raw", label_space=WNIDS, show_progress=False)
    assert not (tmp_path / "raw").exists()


# ----------------------------------------------------------------------------------------------
# ImageNet-C: several archives into one tree; the seeded per-class subset
# ----------------------------------------------------------------------------------------------
def test_imagenet_c_archives_and_subset(server, tmp_path):
    spec = SUITE.dataset("c")
    classes = spec.classes[:4]
    families = {"noise": spec.corruptions[:3], "blur": spec.corruptions[3:7], "weather": spec.corruptions[7:11],
                "digital": spec.corruptions[11:]}
    archives = []
    for family, corruptions in families.items():
        files = {f"{c}/{s}/{cls.folder}/ILSVRC2012_val_{ci * 10 + i:08d}.JPEG": jpeg(ci * 10 + i)
                 for c in corruptions for s in spec.severities for ci, cls in enumerate(classes) for i in range(4)}
        data = make_archive("tar", files)
        archives.append(Archive(f"{family}.tar", (serve(server, f"c-{family}.tar", data),), md5=hashlib.md5(data).hexdigest()))
    spec = dataclasses.replace(spec, classes=classes, source=Source(tuple(archives)))
    fetch(spec, tmp_path / "raw", downloads=tmp_path / "dl", label_space=WNIDS, show_progress=False)
    info = prepare(spec, tmp_path / "raw", tmp_path / "prep", label_space=WNIDS, fraction=0.5, seed=0,
                   corruption_per_leaf=8, show_progress=False)  # 8 per leaf over 4 classes: 2 per class
    assert info["found_images"] == 15 * 5 * 4 * 4 and info["num_images"] == 15 * 5 * 8
    rows = load_prepared(tmp_path / "prep").rows
    leaves = {}
    for r in rows:
        leaves.setdefault(r.group, set()).add(r.instance)
    assert len(leaves) == 75 and len({frozenset(v) for v in leaves.values()}) == 1  # same images in every leaf
    again = prepare(spec, tmp_path / "raw", tmp_path / "prep2", label_space=WNIDS, fraction=0.5, seed=0,
                    corruption_per_leaf=8, show_progress=False)
    assert again["manifest_sha256"] == info["manifest_sha256"]  # fixed by the seed


# ----------------------------------------------------------------------------------------------
# Download behaviour
# ----------------------------------------------------------------------------------------------
def test_interrupted_download_resumes_with_a_range_request(server, tmp_path):
    data = os.urandom(300_000)
    url = serve(server, "big.bin", data)
    Files.cut_once.add("/big.bin")
    Files.requests.clear()
    path = download(Archive("big.bin", (url,), size=len(data), sha256=sha256(data)), tmp_path, show_progress=False)
    assert path.read_bytes() == data
    ranges = [r for p, r in Files.requests if p == "/big.bin"]
    assert ranges[0] is None and ranges[1] == "bytes=150000-"  # the second request continued the first
    assert not (tmp_path / "big.bin.part").exists()


def test_server_without_ranges_restarts_cleanly(server, tmp_path):
    data = os.urandom(100_000)
    url = serve(server, "norange.bin", data)
    Files.cut_once.add("/norange.bin")
    Files.no_range.add("/norange.bin")
    path = download(Archive("norange.bin", (url,), sha256=sha256(data)), tmp_path, show_progress=False)
    assert path.read_bytes() == data


def test_wrong_checksum_names_file_and_digests_and_leaves_nothing(server, tmp_path):
    data = b"not the archive you are looking for" * 100
    url = serve(server, "bad.tar", data)
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as err:
        download(Archive("bad.tar", (url,), sha256=wrong), tmp_path, show_progress=False)
    message = str(err.value)
    assert "bad.tar" in message and wrong in message and sha256(data) in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []


def test_all_mirrors_failing_is_one_clear_error(server, tmp_path):
    with pytest.raises(DownloadError, match="could not be downloaded from any of its 2 address"):
        download(Archive("x.tar", (f"{server}/nope1", f"{server}/nope2")), tmp_path, show_progress=False)


def test_a_wrong_archive_never_becomes_a_dataset_folder(server, tmp_path):
    spec, data = fabricate("r", server)
    archive = dataclasses.replace(spec.source.archives[0], sha256="f" * 64)
    spec = dataclasses.replace(spec, source=Source((archive,)))
    with pytest.raises(ChecksumError):
        fetch(spec, tmp_path / "raw", downloads=tmp_path / "dl", label_space=WNIDS, show_progress=False)
    assert not (tmp_path / "raw").exists()


# ----------------------------------------------------------------------------------------------
# Manual datasets, corrupt images, unsafe archives
# ----------------------------------------------------------------------------------------------
def test_missing_manual_dataset_says_where_to_get_it_and_what_to_run(tmp_path):
    proc = run_rib("--params", str(REPO / "configs" / "imagenet-rib.yaml"), "data", "fetch", "imagenet",
                   "--out", str(tmp_path / "raw"), cwd=tmp_path, check=False)
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("rib: error: dataset 'imagenet' is not downloaded automatically")
    assert "image-net.org" in line and "data add imagenet PATH" in line and "configs/imagenet-rib.yaml" in line


def test_manual_folder_is_added_and_checked(tmp_path):
    spec = dataclasses.replace(SUITE.dataset("imagenet"), classes=SUITE.dataset("imagenet").classes[:5])
    src = tmp_path / "my-val"
    for ci, cls in enumerate(spec.classes):
        (src / cls.folder).mkdir(parents=True)
        (src / cls.folder / f"{cls.folder}_0.JPEG").write_bytes(jpeg(ci))
    add(spec, src, tmp_path / "raw", label_space=WNIDS, show_progress=False)
    prepare(spec, tmp_path / "raw", tmp_path / "prep", label_space=WNIDS, fraction=0.5, seed=0, show_progress=False)
    check_labels(tmp_path / "prep", spec.classes)
    assert (src / spec.classes[0].folder).exists()  # the user's copy is untouched
    (src / spec.classes[2].folder / f"{spec.classes[2].folder}_0.JPEG").unlink()
    with pytest.raises(LayoutError, match="class folder has no images"):
        add(spec, src, tmp_path / "raw2", label_space=WNIDS, show_progress=False)


def fabricate_official_val(folder: Path, classes, per_class: int = 3) -> dict[str, str]:
    """ILSVRC2012_img_val.tar (flat JPEGs) and ILSVRC2012_devkit_t12.tar.gz (meta.mat with the leaf
    synsets and two inner nodes, the ground truth by ILSVRC2012 id) in their official layouts; returns
    each image's wnid."""
    import scipy.io

    folder.mkdir(parents=True)
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
              "num_train_images"]
    leaves = [(i + 1, c.folder, f"class {i}, thing {i}", "a gloss", 0, np.zeros(0), 0, 1300)
              for i, c in enumerate(classes)]
    inner = [(len(classes) + 1, "n99999991", "animal", "g", 2, np.array([1, 2]), 1, 0),
             (len(classes) + 2, "n99999992", "entity", "g", 1, np.array([len(classes) + 1]), 2, 0)]
    synsets = np.zeros(len(leaves) + len(inner), dtype=[(f, "O") for f in fields])
    for i, row in enumerate(inner[:1] + leaves + inner[1:]):  # inner nodes among the leaves, as in meta.mat
        synsets[i] = row
    rng = np.random.default_rng(0)
    truth = rng.permutation(np.repeat(np.arange(len(classes)), per_class))  # class of each val image
    expected = {}
    with tarfile.open(folder / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tar:
        mat = io.BytesIO()
        scipy.io.savemat(mat, {"synsets": synsets})
        gt = "".join(f"{leaves[k][0]}\n" for k in truth).encode()
        for name, blob in (("data/meta.mat", mat.getvalue()), ("data/ILSVRC2012_validation_ground_truth.txt", gt)):
            info = tarfile.TarInfo(f"ILSVRC2012_devkit_t12/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    with tarfile.open(folder / "ILSVRC2012_img_val.tar", "w") as tar:
        for n, k in enumerate(truth):
            name = f"ILSVRC2012_val_{n + 1:08d}.JPEG"
            blob = jpeg(int(k))
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
            expected[name] = classes[k].folder
    return expected


def _official_md5(monkeypatch, folder: Path) -> None:
    """torchvision checks the official archives' md5: accept the fabricated ones instead."""
    from torchvision.datasets import imagenet as tv

    for key, name in (("val", "ILSVRC2012_img_val.tar"), ("devkit", "ILSVRC2012_devkit_t12.tar.gz")):
        digest = hashlib.md5((folder / name).read_bytes()).hexdigest()
        monkeypatch.setitem(tv.ARCHIVE_META, key, (name, digest))


def test_imagenet_val_from_its_official_files(tmp_path, monkeypatch):
    spec = dataclasses.replace(SUITE.dataset("imagenet"), classes=SUITE.dataset("imagenet").classes[:5])
    download = tmp_path / "download"
    expected = fabricate_official_val(download, spec.classes)
    # Unpatched, the fabricated files are not ImageNet's: refused, naming the file, nothing left.
    with pytest.raises(RibError, match="ILSVRC2012_devkit_t12.tar.gz: not the official ImageNet 2012 devkit"):
        add(spec, download, tmp_path / "raw", label_space=WNIDS, show_progress=False)
    assert not (tmp_path / "raw").exists()
    _official_md5(monkeypatch, download)
    for given, out in ((download, "raw"), (download / "ILSVRC2012_img_val.tar", "raw2")):  # the folder, or the tar
        info = add(spec, given, tmp_path / out, label_space=WNIDS, show_progress=False)
        assert info == {"images": 15, "classes": 5}
        found = {p.name: p.parent.name for p in (tmp_path / out).rglob("*.JPEG")}
        assert found == expected  # every image in the folder of its ground-truth wnid
        assert not any(p.name.startswith(".imagenet-devkit") for p in tmp_path.iterdir())
    prepare(spec, tmp_path / "raw", tmp_path / "prep", label_space=WNIDS, fraction=0.5, seed=0, show_progress=False)
    prepared = load_prepared(tmp_path / "prep")
    assert len(prepared.rows) == 15
    for row in prepared.rows:  # each image's label is its ground-truth class in the label space
        assert prepared.classes[row.label].wnids == (expected[Path(row.path).name],)
    assert (download / "ILSVRC2012_img_val.tar").exists()  # the user's files stay
    # The tar without its devkit: one line saying what is missing.
    alone = tmp_path / "alone"
    alone.mkdir()
    os.link(download / "ILSVRC2012_img_val.tar", alone / "ILSVRC2012_img_val.tar")
    with pytest.raises(RibError, match="ILSVRC2012_devkit_t12.tar.gz: not found"):
        add(spec, alone, tmp_path / "raw3", label_space=WNIDS, show_progress=False)
    assert not (tmp_path / "raw3").exists()


def test_corrupt_image_stops_or_is_skipped_and_counted(server, tmp_path):
    spec, _ = fabricate("sketch", server)
    fetch(spec, tmp_path / "raw", downloads=tmp_path / "dl", label_space=WNIDS, show_progress=False)
    victim = sorted((tmp_path / "raw").rglob("*.JPEG"))[4]
    victim.write_bytes(b"\xff\xd8\xff truncated")
    with pytest.raises(DataError, match=f"{victim}: not a readable image"):
        prepare(spec, tmp_path / "raw", tmp_path / "prep", label_space=WNIDS, fraction=0.5, seed=0,
                show_progress=False)
    assert not (tmp_path / "prep").exists()
    info = prepare(spec, tmp_path / "raw", tmp_path / "prep", label_space=WNIDS, fraction=0.5, seed=0,
                   skip_corrupt=True, show_progress=False)
    assert info["skipped_images"] == 1 and info["num_images"] == 3 * len(spec.classes) - 1
    assert info["skipped"][0].endswith(victim.name)


def _tar_with(member: tarfile.TarInfo, data: bytes = b"x") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        good = tarfile.TarInfo("ok/file.txt")
        good.size = 1
        tar.addfile(good, io.BytesIO(b"y"))
        if member.isfile():
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
        else:
            tar.addfile(member)
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink-out", "symlink-abs", "hardlink-out", "fifo"])
def test_tar_members_outside_the_target_are_refused(tmp_path, kind):
    if kind == "dotdot":
        m = tarfile.TarInfo("../escaped.txt")
    elif kind == "absolute":
        m = tarfile.TarInfo(str(tmp_path / "escaped.txt"))
    elif kind == "fifo":
        m = tarfile.TarInfo("ok/pipe")
        m.type = tarfile.FIFOTYPE
    else:
        m = tarfile.TarInfo("ok/link")
        m.type = tarfile.LNKTYPE if kind == "hardlink-out" else tarfile.SYMTYPE
        m.linkname = "/etc/passwd" if kind == "symlink-abs" else "../../escaped.txt"
    archive = tmp_path / "evil.tar"
    archive.write_bytes(_tar_with(m))
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ArchiveError, match="evil.tar: .*refused"):
        extract(archive, dest, show_progress=False)
    assert not (tmp_path / "escaped.txt").exists()
    assert list(dest.iterdir()) == []  # checked before anything is written


@pytest.mark.parametrize("name", ["../escaped.txt", "/tmp/rib-escaped.txt", "ok/../../escaped.txt"])
def test_zip_members_outside_the_target_are_refused(tmp_path, name):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok/file.txt", "y")
        zf.writestr(zipfile.ZipInfo(name), "x")
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ArchiveError, match="would be written outside the target folder"):
        extract(archive, dest, show_progress=False)
    assert list(dest.iterdir()) == [] and not (tmp_path / "escaped.txt").exists()


@pytest.mark.parametrize("target", ["../../escaped.txt", "/etc/passwd", "file.txt"])
def test_zip_symbolic_links_are_refused(tmp_path, target):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok/file.txt", "y")
        link = zipfile.ZipInfo("ok/link")
        link.external_attr = (0o120777 << 16)  # S_IFLNK: what `zip --symlinks` writes
        zf.writestr(link, target)
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ArchiveError, match="evil.zip: member 'ok/link' is a symbolic link; refused"):
        extract(archive, dest, show_progress=False)
    assert list(dest.iterdir()) == []


# ----------------------------------------------------------------------------------------------
# The imagenet-rib configuration without any data
# ----------------------------------------------------------------------------------------------
def test_snakemake_dry_run_of_the_paper_grid_without_data(tmp_path):
    for name in ("Snakefile", "workflow", "profiles", "src", "configs", "params.yaml"):
        src = REPO / name
        (subprocess.run(["cp", "-r", str(src), str(tmp_path / name)], check=True))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", "configs/imagenet-rib.yaml"],
                          cwd=tmp_path, env=rib_env(), text=True, capture_output=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    counts = job_counts(out)
    # 7 models x 8 datasets x (8 trained entries: the paper's 7 training methods + Model Stock's second
    # FT; 7 of them in the tables, 4 weight-space methods); 9 datasets and 7 weight files to fetch
    assert counts["fetch"] == 9 and counts["fetch_weights"] == 7 and counts["prepare"] == 9
    assert counts["finetune"] == 448 and counts["evaluate_finetuned"] == 392 and counts["evaluate_pretrained"] == 7
    assert counts["combine"] == 224 and counts["distance"] == 56
    assert "to download (rule fetch, needs internet): v2, a, r, sketch, cartoon, drawing, c" in out
    # Snakemake's DAG is the job graph (rib.jobs): every job, with exactly its inputs and outputs
    graph = Graph(load_params(str(REPO / "configs" / "imagenet-rib.yaml")))
    expected = {(j.rule, frozenset(p for paths in j.inputs().values() for p in paths), frozenset(j.outputs))
                for j in graph.jobs()}
    assert dry_run_jobs(out) == expected
    assert "to add by hand: imagenet:" in out and "to add by hand: objectnet:" in out


def test_fetch_only_checks_a_dataset_already_in_place(server, tmp_path):
    spec, _ = fabricate("r", server)
    fetch(spec, tmp_path / "raw", downloads=tmp_path / "dl", label_space=WNIDS, show_progress=False)
    Files.requests.clear()
    again = fetch(spec, tmp_path / "raw", downloads=tmp_path / "dl", label_space=WNIDS, show_progress=False)
    assert again["archives"] == [] and Files.requests == []  # nothing downloaded
    manual = SUITE.dataset("objectnet")
    with pytest.raises(LayoutError):  # a manual dataset's folder is checked, not trusted
        fetch(manual, tmp_path / "raw", downloads=tmp_path / "dl", label_space=WNIDS, show_progress=False)


def test_dvc_pipeline_of_the_paper_grid():
    proc = subprocess.run([sys.executable, "-m", "dvc", "stage", "list", "pipelines/imagenet-rib/dvc.yaml"],
                          cwd=REPO, env=rib_env(), text=True, capture_output=True)
    assert proc.returncode == 0, proc.stderr
    stages = [line.split()[0].split(":", 1)[1] for line in proc.stdout.splitlines() if line.strip()]
    kinds = {}
    for s in stages:
        kinds[s.split("@")[0]] = kinds.get(s.split("@")[0], 0) + 1
    trained = ["ft", "lp", "lp_ft", "lora", "visual_prompt", "ewc", "lwf", "ft_seed1"]
    combined = ["wise_ft", "uniform_soup", "greedy_soup", "model_stock"]
    # 27 image caches: 9 datasets x 3 preprocessings (224 px bicubic at crop 0.9 and 1.0, bilinear 0.875)
    assert kinds == {"fetch": 9, "prepare": 9, "cache": 27, "fetch-weights": 7,
                     **{f"finetune-{m}": 56 for m in trained},
                     "evaluate-pretrained": 7, "evaluate-finetuned": 392, **{f"combine-{m}": 56 for m in combined},
                     "distance": 56, "aggregate": 1, "figures": 1}
