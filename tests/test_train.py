"""Training: the schedule, exact resume after a stop or a SIGKILL, LP's frozen backbone, determinism."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from rib.cli import main
from rib.data.labels import LabelProjection
from rib.data.loading import open_dataset
from rib.data.manifest import load_prepared
from rib.errors import TrainingStopped
from rib.methods import get_method
from rib.models import network
from rib.train import Schedule, fit, lr_factor
from tests.conftest import rib_env


def test_warmup_then_cosine():
    assert lr_factor(0, 10, 110) == pytest.approx(0.1)
    assert lr_factor(9, 10, 110) == pytest.approx(1.0)
    assert lr_factor(10, 10, 110) == pytest.approx(1.0)
    assert lr_factor(60, 10, 110) == pytest.approx(0.5)
    assert lr_factor(110, 10, 110) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(5, 0, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


def _setup(tiny_pretrained, method_name, epochs=3):
    ckpt = network.load(tiny_pretrained)
    prepared = load_prepared("data/rib-mini/prepared/sketch")
    data = open_dataset(prepared, "finetune", ckpt.preprocessing, preload_images=True, show_progress=False)
    cfg = {"epochs": epochs, "batch_size": 8, "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0, "warmup_steps": 2}
    method = get_method(method_name, cfg)
    return ckpt, data, LabelProjection(prepared.classes, ckpt.label_space), Schedule.from_config(cfg), method


def _fit(tiny_pretrained, method_name, state, stop=None):
    ckpt, data, proj, sched, method = _setup(tiny_pretrained, method_name)
    fit(ckpt.model, method, data, proj, ckpt.preprocessing, sched, seed=0, device=torch.device("cpu"),
        state_path=state, run_fingerprint="test", show_progress=False, stop_after_epoch=stop)
    return ckpt.model.state_dict()


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("method", ["ft", "lp"])
def test_resume_after_stop_gives_the_same_weights(in_tiny_suite, tiny_pretrained, tmp_path, method):
    unbroken = _fit(tiny_pretrained, method, tmp_path / "a.pt")
    with pytest.raises(TrainingStopped):
        _fit(tiny_pretrained, method, tmp_path / "b.pt", stop=1)
    saved = torch.load(tmp_path / "b.pt", weights_only=True)
    assert saved["epoch"] == 1
    resumed = _fit(tiny_pretrained, method, tmp_path / "b.pt")
    assert _same(unbroken, resumed)


def test_a_final_batch_of_one_image_is_dropped(in_tiny_suite, tiny_pretrained, tmp_path):
    ckpt, data, proj, _, method = _setup(tiny_pretrained, "ft")
    n = len(data)
    sched = Schedule(epochs=1, batch_size=n - 1, lr=0.01, momentum=0.9, weight_decay=0.0, warmup_steps=0)
    history, _, _ = fit(ckpt.model, method, data, proj, ckpt.preprocessing, sched, seed=0,
                        device=torch.device("cpu"), state_path=tmp_path / "s.pt", run_fingerprint="x",
                        show_progress=False)
    assert torch.load(tmp_path / "s.pt", weights_only=True)["step"] == 1
    assert history[0]["train_top1"] >= 0


def test_state_from_other_settings_is_not_resumed(in_tiny_suite, tiny_pretrained, tmp_path):
    with pytest.raises(TrainingStopped):
        _fit(tiny_pretrained, "ft", tmp_path / "s.pt", stop=1)
    state = torch.load(tmp_path / "s.pt", weights_only=True)
    state["fingerprint"] = "other settings"
    torch.save(state, tmp_path / "s.pt")
    fresh = _fit(tiny_pretrained, "ft", tmp_path / "fresh.pt")
    assert _same(fresh, _fit(tiny_pretrained, "ft", tmp_path / "s.pt"))


def test_linear_probing_changes_only_the_head(in_tiny_suite, tiny_pretrained, tmp_path):
    before = network.load(tiny_pretrained).model.state_dict()
    after = _fit(tiny_pretrained, "lp", tmp_path / "lp.pt")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"fc.weight", "fc.bias"}
    full = _fit(tiny_pretrained, "ft", tmp_path / "ft.pt")
    assert any(not torch.equal(before[k], full[k]) for k in before if k.startswith("layer1"))


def test_finetune_resumes_after_sigkill_with_identical_weights(in_tiny_suite, tiny_pretrained, tmp_path):
    root, _ = in_tiny_suite
    base = ["finetune", "mini_resnet.narrow", "ft", "c", "--pretrained", str(tiny_pretrained),
            "--data", "data/rib-mini/prepared/c", "-q"]
    epochs = ["--params", str(tmp_path / "params.yaml")]
    params = json.loads(json.dumps(in_tiny_suite[1]))
    params["train"]["epochs"] = 6
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    ref = tmp_path / "ref" / "model.pt"
    assert main(base + epochs + ["--out", str(ref)]) == 0

    out = tmp_path / "killed" / "model.pt"
    state = out.with_name("state.pt")
    cmd = [sys.executable, "-m", "rib", *base, *epochs, "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=root, env=rib_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not out.exists(), "a killed run must not leave a final checkpoint"
    done = torch.load(state, weights_only=True)["epoch"]
    assert 1 <= done < 6

    assert main(base + epochs + ["--out", str(out)]) == 0
    assert not state.exists()
    a = torch.load(ref, weights_only=True)
    b = torch.load(out, weights_only=True)
    assert _same(a["state_dict"], b["state_dict"])
    assert [h["loss"] for h in a["meta"]["history"]] == [h["loss"] for h in b["meta"]["history"]]


def test_same_cell_twice_gives_identical_numbers(in_tiny_suite, tiny_pretrained, tmp_path):
    results = []
    for run in ("one", "two"):
        ckpt = tmp_path / run / "model.pt"
        assert main(["finetune", "mini_resnet.narrow", "lp", "sketch", "--pretrained", str(tiny_pretrained),
                     "--data", "data/rib-mini/prepared/sketch", "--out", str(ckpt), "-q"]) == 0
        assert main(["evaluate", str(ckpt), "--out-dir", str(tmp_path / run / "cells"), "-q"]) == 0
        results.append({p.name: json.loads(p.read_text()) for p in (tmp_path / run / "cells").glob("*.json")})
    assert sorted(results[0]) == ["c.json", "sketch.json", "source.json"]
    for name in results[0]:
        assert results[0][name]["subsets"] == results[1][name]["subsets"]
    own = results[0]["sketch.json"]
    assert own["subset"] == "heldout" and "all" not in own["subsets"]  # never training accuracy
    assert len(results[0]["c.json"]["subsets"]["all"]["per_corruption"]) == 15


def test_checkpoint_round_trip_gives_the_same_logits(in_tiny_suite, tiny_pretrained, tmp_path):
    ckpt = network.load(tiny_pretrained)
    x = torch.randn(3, 3, 32, 32)
    network.save(tmp_path / "copy.pt", ckpt.model, name=ckpt.name, arch=ckpt.arch, arch_kwargs=ckpt.arch_kwargs,
                 label_space=ckpt.label_space, preprocessing=ckpt.preprocessing, meta=ckpt.meta)
    again = network.load(tmp_path / "copy.pt")
    ckpt.model.eval()
    again.model.eval()
    with torch.no_grad():
        assert torch.equal(ckpt.model(x), again.model(x))
    (tmp_path / "broken.pt").write_bytes(Path(tiny_pretrained).read_bytes()[:1000])
    with pytest.raises(Exception, match="broken.pt: not a readable rib checkpoint"):
        network.load(tmp_path / "broken.pt")
