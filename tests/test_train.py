"""Training: the schedule, exact resume after a stop or a SIGKILL, LP's frozen backbone, determinism."""

from __future__ import annotations

import json
import math
import os
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
from rib.data.loading import EpochBatches, ImageDataset, open_dataset
from rib.data.manifest import load_prepared
from rib.errors import TrainingInterrupted, TrainingStopped
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


def _setup(tiny_pretrained, method_name, epochs=3, batch_size=8, precision="auto"):
    ckpt = network.load(tiny_pretrained)
    prepared = load_prepared("data/rib-mini/prepared/sketch")
    data = open_dataset(prepared, "finetune", ckpt.preprocessing, preload_images=True, show_progress=False)
    cfg = {"epochs": epochs, "batch_size": batch_size, "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0,
           "warmup_steps": 2, "precision": precision}
    method = get_method(method_name, cfg)
    return ckpt, data, LabelProjection(prepared.classes, ckpt.label_space), Schedule.from_config(cfg), method


def _fit(tiny_pretrained, method_name, state, stop=None, precision="auto"):
    ckpt, data, proj, sched, method = _setup(tiny_pretrained, method_name, precision=precision)
    fit(ckpt.model, method, data, proj, ckpt.preprocessing, sched, seed=0, device=torch.device("cpu"),
        state_path=state, run_fingerprint="test", show_progress=False, stop_after_epoch=stop)
    return ckpt.model.state_dict()


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("method, precision", [("ft", "auto"), ("linear_probe", "auto"), ("ft", "fp16")])
def test_resume_after_stop_gives_the_same_weights(in_tiny_suite, tiny_pretrained, tmp_path, method, precision,
                                                  caplog):
    unbroken = _fit(tiny_pretrained, method, tmp_path / "a.pt", precision=precision)
    with pytest.raises(TrainingStopped):
        _fit(tiny_pretrained, method, tmp_path / "b.pt", stop=1, precision=precision)
    saved = torch.load(tmp_path / "b.pt", weights_only=True)
    assert saved["epoch"] == 1
    # fp16 (the reference code's AMP) scales the loss; the scale travels in the state.
    assert ("scale" in saved["scaler"]) == (precision == "fp16")
    caplog.clear()
    with caplog.at_level("INFO", logger="rib.train"):
        resumed = _fit(tiny_pretrained, method, tmp_path / "b.pt", precision=precision)
    assert "at epoch 2 of" in caplog.text  # it did resume (a silent restart would end the same)
    assert _same(unbroken, resumed)
    if precision == "fp16":  # it trained, in half precision: not the fp32 run's weights
        fp32 = _fit(tiny_pretrained, method, tmp_path / "c.pt")
        before = network.load(tiny_pretrained).model.state_dict()
        assert not _same(fp32, resumed) and not _same(before, resumed)


def test_a_final_batch_of_one_image_is_dropped(in_tiny_suite, tiny_pretrained, tmp_path):
    ckpt, data, proj, _, method = _setup(tiny_pretrained, "ft")
    n = len(data)
    sched = Schedule(epochs=1, batch_size=n - 1, lr=0.01, momentum=0.9, weight_decay=0.0, warmup_steps=0)
    history, _, _ = fit(ckpt.model, method, data, proj, ckpt.preprocessing, sched, seed=0,
                        device=torch.device("cpu"), state_path=tmp_path / "s.pt", run_fingerprint="x",
                        show_progress=False)
    assert torch.load(tmp_path / "s.pt", weights_only=True)["step"] == 1
    assert history[0]["train_top1"] >= 0


def test_state_from_other_settings_or_damaged_is_not_resumed(in_tiny_suite, tiny_pretrained, tmp_path, caplog):
    from rib.io import tree_digest
    from rib.models.network import DIGEST

    fresh = _fit(tiny_pretrained, "ft", tmp_path / "fresh.pt")
    for change, said in (("fingerprint", "training state is from other settings"),
                         ("weights", "training state does not match its recorded digest")):
        with pytest.raises(TrainingStopped):
            _fit(tiny_pretrained, "ft", tmp_path / f"{change}.pt", stop=1)
        state = torch.load(tmp_path / f"{change}.pt", weights_only=True)
        recorded = state.pop(DIGEST)
        if change == "fingerprint":
            state["fingerprint"] = "other settings"
            state[DIGEST] = tree_digest(state)  # a consistent state file, of other settings
        else:
            next(iter(state["model"].values())).view(-1)[0] += 1.0  # one weight changed on disk
            state[DIGEST] = recorded
        torch.save(state, tmp_path / f"{change}.pt")
        caplog.clear()
        assert _same(fresh, _fit(tiny_pretrained, "ft", tmp_path / f"{change}.pt"))
        assert said in caplog.text


def test_linear_probing_on_features_matches_the_backbone_forward(in_tiny_suite, tiny_pretrained, tmp_path,
                                                                 monkeypatch):
    """LP trains its head on the frozen backbone's features, computed once; the result is the
    head the image-by-image loop gives, to float rounding."""
    on_features = _fit(tiny_pretrained, "linear_probe", tmp_path / "a.pt")
    monkeypatch.setattr("rib.methods.lp.LinearProbing.head_on_features", False)
    forward = _fit(tiny_pretrained, "linear_probe", tmp_path / "b.pt")
    for key in on_features:
        torch.testing.assert_close(on_features[key], forward[key], atol=1e-5, rtol=1e-4)


def test_linear_probing_changes_only_the_head(in_tiny_suite, tiny_pretrained, tmp_path):
    before = network.load(tiny_pretrained).model.state_dict()
    after = _fit(tiny_pretrained, "linear_probe", tmp_path / "lp.pt")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"fc.weight", "fc.bias"}
    # The reference code's HeadOnly on a ResNet trains fc alone too, but in training mode: the
    # batch-norm statistics follow D_ft (buffers), no other weight moves.
    head_only = _fit(tiny_pretrained, "lp", tmp_path / "head_only.pt")
    changed = {k for k in before if not torch.equal(before[k], head_only[k])}
    assert {"fc.weight", "fc.bias"} <= changed
    assert all(k.startswith("fc.") or k.endswith(("running_mean", "running_var", "num_batches_tracked"))
               for k in changed)
    assert any(k.endswith("running_mean") for k in changed)
    full = _fit(tiny_pretrained, "ft", tmp_path / "ft.pt")
    assert any(not torch.equal(before[k], full[k]) for k in before if k.startswith("layer1"))


class _SignalAtStep:
    """A method that sends this process a real signal while computing the loss of step ``at``."""

    def __init__(self, method, at: int, signum=signal.SIGTERM):
        self._method, self.at, self.signum, self.calls = method, at, signum, 0

    def __getattr__(self, name):
        return getattr(self._method, name)

    def loss(self, *args):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), self.signum)
        return self._method.loss(*args)


class _SignalWhileSaving(_SignalAtStep):
    """... or while the state of epoch ``at`` is being written."""

    def loss(self, *args):
        return self._method.loss(*args)

    def state_dict(self):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), self.signum)
        return self._method.state_dict()


def test_a_signal_while_the_epoch_state_is_written_is_recorded(in_tiny_suite, tiny_pretrained, tmp_path):
    ckpt, data, proj, sched, method = _setup(tiny_pretrained, "ft")
    with pytest.raises(TrainingInterrupted, match="stopped by SIGTERM after epoch 2"):
        fit(ckpt.model, _SignalWhileSaving(method, 2), data, proj, ckpt.preprocessing, sched, seed=0,
            device=torch.device("cpu"), state_path=tmp_path / "s.pt", run_fingerprint="test", show_progress=False)
    saved = torch.load(tmp_path / "s.pt", weights_only=True)
    assert saved["epoch"] == 2 and [i["epoch"] for i in saved["interruptions"]] == [3]


@pytest.mark.parametrize("where", ["mid-epoch", "epoch end"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_stop_signal_saves_mid_epoch_and_resume_is_exact(in_tiny_suite, tiny_pretrained, tmp_path, where, signum):
    ckpt, data, proj, sched, method = _setup(tiny_pretrained, "ft", batch_size=3)
    n = len(data)
    steps_per_epoch = math.ceil((n - (n % sched.batch_size == 1)) / sched.batch_size)  # as fit counts them
    assert steps_per_epoch >= 4
    at = 2 if where == "mid-epoch" else steps_per_epoch
    unbroken_history, _, _ = fit(ckpt.model, method, data, proj, ckpt.preprocessing, sched, seed=0,
                                 device=torch.device("cpu"), state_path=tmp_path / "a.pt", run_fingerprint="test",
                                 show_progress=False)
    unbroken = ckpt.model.state_dict()

    ckpt, data, proj, sched, method = _setup(tiny_pretrained, "ft", batch_size=3)
    previous = signal.getsignal(signum)
    with pytest.raises(TrainingInterrupted, match=f"stopped by {signal.Signals(signum).name}") as stop:
        fit(ckpt.model, _SignalAtStep(method, at, signum), data, proj, ckpt.preprocessing, sched, seed=0,
            device=torch.device("cpu"), state_path=tmp_path / "b.pt", run_fingerprint="test", show_progress=False)
    assert stop.value.signum == signum
    assert signal.getsignal(signum) == previous, "fit must put the signal handlers back"
    saved = torch.load(tmp_path / "b.pt", weights_only=True)
    assert saved["step"] == at  # the step in progress finished, then the state was written
    assert (saved["epoch"], saved["batch"]) == ((0, at) if at < steps_per_epoch else (1, 0))
    assert [i["signal"] for i in saved["interruptions"]] == [signal.Signals(signum).name]

    ckpt, data, proj, sched, method = _setup(tiny_pretrained, "ft", batch_size=3)
    stops: list = []
    history, _, _ = fit(ckpt.model, method, data, proj, ckpt.preprocessing, sched, seed=0,
                        device=torch.device("cpu"), state_path=tmp_path / "b.pt", run_fingerprint="test",
                        show_progress=False, interruptions=stops)
    assert _same(unbroken, ckpt.model.state_dict())
    assert [h["loss"] for h in history] == [h["loss"] for h in unbroken_history]
    assert [h["train_top1"] for h in history] == [h["train_top1"] for h in unbroken_history]
    assert len(stops) == 1 and stops[0]["step"] == at


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_finetune_resumes_after_a_signal_with_identical_weights(in_tiny_suite, tiny_pretrained, tmp_path, signum):
    """SIGKILL: resume from the last finished epoch. SIGTERM (SLURM preemption): the run saves where it
    is, exits with 143, and the next run resumes from that step. Both end with the unbroken weights."""
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
    proc.send_signal(signum)
    proc.wait()
    expected = -signal.SIGKILL if signum == signal.SIGKILL else 128 + signal.SIGTERM
    assert proc.returncode == expected, "the run finished before it could be stopped"
    assert not out.exists(), "a stopped run must not leave a final checkpoint"
    saved = torch.load(state, weights_only=True)
    assert 1 <= saved["epoch"] < 6
    assert len(saved.get("interruptions", [])) == (signum == signal.SIGTERM)

    assert main(base + epochs + ["--out", str(out)]) == 0
    assert not state.exists()
    a = torch.load(ref, weights_only=True)
    b = torch.load(out, weights_only=True)
    assert _same(a["state_dict"], b["state_dict"])
    assert [h["loss"] for h in a["meta"]["history"]] == [h["loss"] for h in b["meta"]["history"]]
    assert len(b["meta"]["interruptions"]) == (signum == signal.SIGTERM)


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


class _WhoLoads(ImageDataset):
    """Each item is (the loading process's pid, the index): shows which process served it."""

    def __getitem__(self, i: int):
        return torch.tensor([os.getpid(), i]), self.labels[i]


def test_dataloader_workers_serve_every_epoch_and_give_the_same_weights(in_tiny_suite, tiny_pretrained, tmp_path):
    """runtime.loader_workers > 0: images streamed from disk through 2 workers started once for the
    run train to the same weights as images decoded into memory first."""
    ckpt, preloaded, proj, sched, method = _setup(tiny_pretrained, "ft")
    streamed = open_dataset(load_prepared("data/rib-mini/prepared/sketch"), "finetune", ckpt.preprocessing,
                            preload_images=False, show_progress=False)
    assert isinstance(streamed, ImageDataset)
    weights = []
    for data, workers in ((preloaded, 0), (streamed, 2)):
        ckpt, *_ = _setup(tiny_pretrained, "ft")
        fit(ckpt.model, get_method("ft", {}), data, proj, ckpt.preprocessing, sched, seed=0,
            device=torch.device("cpu"), state_path=tmp_path / f"{workers}.state", run_fingerprint="test",
            show_progress=False, workers=workers)
        weights.append(ckpt.model.state_dict())
    assert _same(*weights)

    epochs = EpochBatches(_WhoLoads(streamed.root, streamed.rows, streamed.prep), batch_size=3, workers=2)
    orders = [[4, 1, 3, 0, 2], [0, 1, 2, 3, 4], [2, 4]]
    served = [torch.cat([items for items, _ in epochs(order)]) for order in orders]
    assert [s[:, 1].tolist() for s in served] == orders  # each epoch in its own order
    pids = {int(p) for s in served for p in s[:, 0]}
    assert len(pids) == 2 and os.getpid() not in pids  # the same two workers for every epoch


def test_pretraining_snapshots_survive_a_stop_and_are_evaluated(in_tiny_suite, tiny_pretrained, tmp_path):
    """robustness.snapshots: the tiny grid's 6 pretraining epochs keep epochs 2, 3 and 4. A run stopped
    after epoch 3 keeps its snapshots beside its resume state, where no pipeline deletes them
    (Snakemake and DVC remove a job's outputs, the snapshots' folder among them, before rerunning
    it); resumed, it ends with the same snapshots as an unbroken run, bit for bit."""
    import shutil

    from rib import steps

    root, params = in_tiny_suite
    kept = Path(tiny_pretrained).parent / "snapshots"
    assert sorted(p.name for p in kept.glob("*.pt")) == ["epoch-2.pt", "epoch-3.pt", "epoch-4.pt"]
    assert not (Path(tiny_pretrained).parent / ".state-snapshots").exists()  # removed at the end
    snap = network.load(kept / "epoch-3.pt")
    assert (snap.meta["kind"], snap.meta["epoch"], snap.meta["epochs"]) == ("snapshot", 3, 6)
    out, folder, staged = tmp_path / "pretrained.pt", tmp_path / "snapshots", tmp_path / ".state-snapshots"
    staged.mkdir()
    (staged / "epoch-5.pt").write_bytes(b"from another setting")  # not one of this run's epochs: removed
    with pytest.raises(TrainingStopped):
        steps.pretrain(params, "mini_resnet.narrow", data="data/rib-mini/corpora/prepared/narrow", out=out,
                       snapshots=folder, progress=False, stop_after_epoch=3)
    assert sorted(p.name for p in staged.glob("*.pt")) == ["epoch-2.pt", "epoch-3.pt"]
    written = (staged / "epoch-2.pt").stat().st_mtime_ns
    shutil.rmtree(folder, ignore_errors=True)  # what Snakemake does to a directory() output before the rerun
    steps.pretrain(params, "mini_resnet.narrow", data="data/rib-mini/corpora/prepared/narrow", out=out,
                   snapshots=folder, progress=False)
    assert (folder / "epoch-2.pt").stat().st_mtime_ns == written  # kept from before the stop, not written again
    assert not staged.exists() and not (tmp_path / "state.pt").exists()
    for name in ("epoch-2.pt", "epoch-3.pt", "epoch-4.pt"):
        a, b = network.load(kept / name).model.state_dict(), network.load(folder / name).model.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    # evaluated on every dataset of the grid: one point per snapshot
    record = steps.evaluate_snapshots(params, kept, out=tmp_path / "snapshots.json", progress=False)
    assert [p["epoch"] for p in record["snapshots"]] == [2, 3, 4]
    assert all(set(p["top1"]) == {"source", "sketch", "c"} for p in record["snapshots"])
    assert json.loads((tmp_path / "snapshots.json").read_text())["model"] == "mini_resnet.narrow"
    # a snapshot missing (moved aside as damaged) is an error, never a baseline of fewer points
    (folder / "epoch-3.pt").unlink()
    with pytest.raises(Exception, match=r"snapshots of epochs \[2, 4\], robustness.snapshots asks for \[2, 3, 4\]"):
        steps.evaluate_snapshots(params, folder, out=tmp_path / "x.json", progress=False)
    with pytest.raises(Exception, match="no such folder of pretraining snapshots"):
        steps.evaluate_snapshots(params, tmp_path / "nowhere", out=tmp_path / "x.json")
