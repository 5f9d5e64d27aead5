"""The fault and bad-input campaign: how often each fault was injected, what came of it, and whether
the final numbers equal those of an unbroken run.

    python benchmarks/faults.py                 # the full campaign (about 12 minutes on 2 cores)
    python benchmarks/faults.py --seeds 2 --dvc-seeds 1 --rounds 1   # a shorter one

Kills: every process working in the workspace gets SIGKILL at a random time (seeded) after a job of
the targeted step started; then the same command is run again, and killed again in the next step,
until a last run completes. Damage: files of a finished workspace are truncated or altered, then the
same command is run until it succeeds. Full disk: a 4 MiB tmpfs (root only) filled to a random
number of free bytes before rib writes there. Out of memory: rib under an address-space cap of
start-up plus a few MiB. Bad input: the bad-input tests of the suite, with their case counts.
The table goes to stdout (markdown) and, with --out, to a file.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "src")]

from tests import faults
from tests.conftest import rib_env

ROWS: dict[str, dict] = defaultdict(lambda: {"tried": 0, "outcomes": defaultdict(int), "identical": None})


def record(fault: str, outcome: str, identical: bool | None = None) -> None:
    row = ROWS[fault]
    row["tried"] += 1
    row["outcomes"][outcome] += 1
    if identical is not None:
        row["identical"] = (row["identical"] if row["identical"] is not None else 0) + int(identical)
        row.setdefault("compared", 0)
        row["compared"] += 1


def kill_chains(base: Path, expected: dict, seeds: list[int], dvc: bool) -> None:
    front = "dvc repro" if dvc else "snakemake"
    cmd = faults.dvc_cmd() if dvc else faults.snakemake_cmd()
    for seed in seeds:
        ws = faults.make_workspace(base / f"{'dvc' if dvc else 'sm'}-kill-{seed}", dvc=dvc)
        rng = random.Random(seed)
        kills = []
        for stage, max_delay in (("prepare", 0.5), ("finetune", 0.1), ("evaluate", 0.5), ("aggregate", 0.8)):
            kill = faults.kill_during(ws, cmd, stage, rng, max_delay)
            problems = faults.outputs_left_are_valid(ws)
            kills.append((stage, kill, problems))
        final = faults.run(cmd, ws, check=False)
        same = final.returncode == 0 and faults.final_results(ws) == expected
        for stage, kill, problems in kills:
            if kill.finished_first:
                outcome = "run ended before the step"
            else:
                where = "in the step" if kill.hit else "just after the step"
                outcome = (f"killed {where}; " + ("no false output" if not problems else f"FALSE OUTPUT {problems}")
                           + ("; rerun completed" if final.returncode == 0 else "; RERUN FAILED"))
            record(f"SIGKILL of the whole `{front}` run during {stage}", outcome, same)
        print(f"{front} seed {seed}: rerun rc {final.returncode}, identical {same}", flush=True)
        if final.returncode != 0:
            print(final.stdout[-2000:] + final.stderr[-3000:], flush=True)


DAMAGE = {
    "truncated checkpoint": ("checkpoints/rib-mini/*/*/*/model.pt", faults.truncate),
    "checkpoint with one flipped bit": ("checkpoints/rib-mini/*/*/*/model.pt", faults.flip_tensor_byte),
    "result file with an altered number": ("results/rib-mini/*/*/*/*.json", faults.alter_number),
    "truncated result file": ("results/rib-mini/*/*/*/*.json", faults.truncate),
    "cache shard with one flipped byte": ("cache/rib-mini/*/*/shard-*.npy", faults.flip_last_byte),
    "truncated cache shard": ("cache/rib-mini/*/*/shard-*.npy", faults.truncate),
}


def damage_rounds(base: Path, ref_ws: Path, expected: dict, rounds: int, dvc_ref: Path | None) -> None:
    rng = random.Random(1)
    for r in range(rounds):
        for name, (pattern, how) in DAMAGE.items():
            for front, source in (("snakemake", ref_ws), ("dvc repro", dvc_ref)):
                if source is None or (front == "dvc repro" and r > 0):
                    continue
                ws = base / f"damage-{r}-{re.sub(r'[^a-z]+', '-', name)}-{front.split()[0]}"
                shutil.copytree(source, ws, symlinks=True)
                victim = rng.choice(sorted(ws.glob(pattern)))
                how(victim)
                cmd = faults.snakemake_cmd() if front == "snakemake" else faults.dvc_cmd()
                runs = []
                for _ in range(4):
                    runs.append(faults.run(cmd, ws, check=False))
                    if runs[-1].returncode == 0:
                        break
                said = "".join(p.stdout + p.stderr for p in runs)
                named = str(victim.relative_to(ws)) in said or str(victim.parent.relative_to(ws)) in said
                ok = runs[-1].returncode == 0
                same = ok and faults.final_results(ws) == expected and not faults.outputs_left_are_valid(ws)
                if front == "snakemake":
                    outcome = (("detected, named, moved aside" if named else "NOT NAMED")
                               + f"; rebuilt in {len(runs)} run(s)" if ok else "NOT REBUILT")
                else:
                    outcome = "DVC saw the changed output and reran its stage" if ok else "NOT REBUILT"
                record(f"{name} (`{front}`)", outcome, same)
                print(f"damage {name} ({front}): {outcome}, identical {same}", flush=True)
                shutil.rmtree(ws)


def concurrent_runs(base: Path, ref_ws: Path, expected: dict, rounds: int) -> None:
    for r in range(rounds):
        ws = base / f"twice-{r}"
        shutil.copytree(ref_ws, ws, symlinks=True)
        for name in ("results", "checkpoints", "reports"):
            shutil.rmtree(ws / name)
        with open(base / f"twice-{r}.log", "w") as log:
            first = subprocess.Popen(faults.snakemake_cmd(), cwd=ws, env=rib_env(), stdout=log,
                                     stderr=subprocess.STDOUT)
            while not any("rib finetune" in c for c in faults.processes_in(ws).values()):
                time.sleep(0.05)
            time.sleep(random.Random(r).uniform(0, 1.5))
            with faults.paused(ws):  # the first run is alive while the second starts, however slowly
                second = faults.run(faults.snakemake_cmd(), ws, check=False)
            rc = first.wait()
        said = second.stdout + second.stderr
        refused = second.returncode != 0 and f"(pid {first.pid}" in said and "LockException" in said
        same = rc == 0 and faults.final_results(ws) == expected
        record("a second `snakemake` started while the first runs",
               ("second refused, naming the first" if refused else "SECOND NOT REFUSED")
               + ("; first completed" if rc == 0 else "; FIRST FAILED"), same)
        shutil.rmtree(ws)


def full_disk(base: Path, ref_ws: Path, rounds: int) -> None:
    if os.geteuid() != 0:
        record("full disk while writing results / a checkpoint", "skipped: mounting a tmpfs needs root")
        return
    from rib.io import read_record
    from rib.models import network

    rng = random.Random(2)
    ckpt = "models/rib-mini/mini_vit.narrow/pretrained.pt"
    for r in range(rounds):
        disk = base / f"disk-{r}"
        disk.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], check=True)
        try:
            (disk / "results").mkdir()
            for p in (ref_ws / "results/rib-mini/mini_vit.narrow/pretrained").glob("*.json"):
                shutil.copy(p, disk / "results" / p.name)
            shutil.copy(ref_ws / "checkpoints/rib-mini/mini_vit.narrow/ft/sketch/model.pt", disk / "model.pt")
            before = {str(p.relative_to(disk)): p.read_bytes() for p in disk.rglob("*") if p.is_file()}
            free_left = rng.randrange(0, 96 * 1024)
            faults.fill_disk(disk, leave=free_left)
            for what, targets, args in (
                ("results", "results/",
                 ["evaluate", ckpt, "data/rib-mini/prepared/source", "data/rib-mini/prepared/sketch",
                  "data/rib-mini/prepared/c", "--out-dir", str(disk / "results"), "-q"]),
                ("checkpoint", "model.pt",
                 ["finetune", "mini_vit.narrow", "ft", "sketch", "--pretrained", ckpt, "--data",
                  "data/rib-mini/prepared/sketch", "--out", str(disk / "model.pt"),
                  "--state", str(base / f"disk-state-{r}.pt"), "-q"]),
            ):
                proc = subprocess.run([sys.executable, "-m", "rib", *args], cwd=ref_ws, env=rib_env(), text=True,
                                      capture_output=True)
                errors = [line for line in proc.stderr.splitlines() if line.startswith("rib: error: ")]
                # each file it was writing is the one from before, or a complete new one (a write
                # that still fitted before the disk filled up)
                intact = True
                for name, old in before.items():
                    if not name.startswith(targets):
                        continue
                    new = (disk / name).read_bytes() if (disk / name).exists() else None
                    if new != old:
                        try:
                            read_record(disk / name) if name.endswith(".json") else network.load(disk / name)
                        except Exception:
                            intact = False
                leftovers = [p.name for p in disk.rglob("*.partial")]
                if proc.returncode == 0:
                    outcome = f"fitted in {free_left // 1024} KiB free"
                else:
                    outcome = ("one-line error naming the file and the full disk" if len(errors) == 1
                               and "is full" in errors[0] and "Traceback" not in proc.stderr else "UNCLEAR ERROR")
                    outcome += ("; every file there is the previous one or a complete new one"
                                if intact and not leftovers else "; A FILE IS DAMAGED OR PARTIAL")
                record(f"full disk while writing {what}", outcome)
        finally:
            subprocess.run(["umount", "-l", str(disk)], check=False)


def out_of_memory(ref_ws: Path, margins: list[int], repeats: int) -> None:
    from tests.test_faults import CAPPED

    ckpt = "models/rib-mini/mini_vit.narrow/pretrained.pt"
    for margin in [m for m in margins for _ in range(repeats)]:
        for what, args, setting in (
            ("fine-tuning", ["finetune", "mini_vit.narrow", "ft", "sketch", "--pretrained", ckpt, "--data",
                             "data/rib-mini/prepared/sketch", "--out", "/tmp/rib-oom.pt", "--state",
                             "/tmp/rib-oom-state.pt", "-q"], "train.batch_size"),
            ("evaluation", ["evaluate", ckpt, "data/rib-mini/prepared/source", "--out-dir", "/tmp/rib-oom-cells", "-q"],
             "evaluate.batch_size"),
        ):
            proc = subprocess.run([sys.executable, "-c", CAPPED, str(margin), *args], cwd=ref_ws, env=rib_env(),
                                  text=True, capture_output=True)
            errors = [line for line in proc.stderr.splitlines() if line.startswith("rib: error: ")]
            if proc.returncode == 0:
                outcome = "fitted"
            elif len(errors) == 1 and setting in errors[0] and "Traceback" not in proc.stderr:
                outcome = f"one-line error naming {setting}"
            else:
                outcome = "UNCLEAR: " + (proc.stderr.strip().splitlines() or ["?"])[-1][:120]
            record(f"{what} capped at start-up + {margin} MiB of memory", outcome)
    intact = (ref_ws / ckpt).exists() and not (ref_ws / f"{ckpt}.damaged").exists()
    record("pretrained checkpoint after the memory faults", "untouched" if intact else "MOVED ASIDE")


BAD_INPUT_TESTS = {
    "params.yaml: unknown key, wrong type, out of range, missing key, enum, unknown names, empty grid":
        "tests/test_config.py",
    "datasets: missing/empty/unexpected class folder, corrupt image, wrong layout, manifest digest":
        "tests/test_data.py tests/test_faults.py::test_a_dataset_folder_of_the_wrong_layout",
    "archives escaping the target (tar and zip: ../, absolute, symlink, hard link, special file)":
        "tests/test_real_data.py -k refused",
    "downloads: wrong checksum, failing mirrors, wrong archive, missing manual dataset":
        "tests/test_real_data.py -k 'checksum or mirrors or wrong_archive or manual'",
    "models: unknown name, wrong-architecture weights, wrong shape, offline fetch":
        "tests/test_models.py tests/test_faults.py::test_weights_of_the_wrong_shape_in_a_checkpoint",
    "methods: LoRA without attention, LP-FT without its LP checkpoint, method settings":
        "tests/test_methods.py -k 'lora_on or settings_are_checked' tests/test_faults.py -k 'lp_ft or lora'",
}


def bad_inputs() -> None:
    for name, spec in BAD_INPUT_TESTS.items():
        proc = subprocess.run(f"{sys.executable} -m pytest -q -p no:cacheprovider {spec}", shell=True, cwd=REPO,
                              env=rib_env(), text=True, capture_output=True)
        m = re.search(r"(\d+) passed", proc.stdout)
        failed = re.search(r"(\d+) failed", proc.stdout)
        ROWS[name] = {"tried": int(m.group(1)) if m else 0,
                      "outcomes": {("all refused with one line naming the file or key" if not failed
                                    else f"{failed.group(1)} FAILED"): int(m.group(1)) if m else 0},
                      "identical": None}
    from tests.test_config import test_any_bad_value_gives_one_line_naming_its_key as prop

    n = prop._hypothesis_internal_use_settings.max_examples  # run above, with tests/test_config.py
    ROWS["params.yaml: property test (hypothesis): a random bad value at a random key"] = {
        "tried": n, "outcomes": {"still valid, or one line naming the key": n}, "identical": None}


def table() -> str:
    lines = ["| fault or bad input | times | outcome | final results identical to the unbroken run |",
             "|---|---:|---|---|"]
    for name, row in ROWS.items():
        outcomes = "; ".join(f"{k} ({v})" if len(row["outcomes"]) > 1 else k for k, v in row["outcomes"].items())
        same = "n/a" if row["identical"] is None else f"{row['identical']}/{row['compared']}"
        lines.append(f"| {name} | {row['tried']} | {outcomes} | {same} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=4, help="Snakemake kill chains (4 kills each)")
    ap.add_argument("--dvc-seeds", type=int, default=2, help="DVC kill chains (4 kills each)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of each damage, lock and disk fault")
    ap.add_argument("--out", default=None, help="also write the table to this file")
    ap.add_argument("--parts", default="kill,damage,lock,disk,memory,input",
                    help="which parts to run (comma-separated; default: all)")
    args = ap.parse_args()
    t0 = time.time()
    base = Path(tempfile.mkdtemp(prefix="rib-faults-"))
    try:
        ref_ws = faults.make_workspace(base / "reference")
        faults.run(faults.snakemake_cmd(), ref_ws)
        expected = faults.final_results(ref_ws)
        parts = set(args.parts.split(","))
        dvc_ref = None
        if args.dvc_seeds and parts & {"kill", "damage"}:
            dvc_ref = faults.make_workspace(base / "dvc-reference", dvc=True)
            faults.run(faults.dvc_cmd(), dvc_ref)
            assert faults.final_results(dvc_ref) == expected, "DVC and Snakemake disagree on an unbroken run"
        if "kill" in parts:
            kill_chains(base, expected, list(range(args.seeds)), dvc=False)
            kill_chains(base, expected, list(range(100, 100 + args.dvc_seeds)), dvc=True)
        if "damage" in parts:
            damage_rounds(base, ref_ws, expected, args.rounds, dvc_ref)
        if "lock" in parts:
            concurrent_runs(base, ref_ws, expected, args.rounds)
        if "disk" in parts:
            full_disk(base, ref_ws, args.rounds + 1)
        if "memory" in parts:
            out_of_memory(ref_ws, [1, 2, 4, 8], args.rounds)
        if "input" in parts:
            bad_inputs()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    text = table() + f"\n\n({time.time() - t0:.0f} s on {os.cpu_count()} cores)\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
