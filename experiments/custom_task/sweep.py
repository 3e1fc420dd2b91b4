"""ULS vs ELS on the tabular example at ε = 4: tune on seed 0, report fresh seeds (run from the repository root).

    python experiments/custom_task/sweep.py [--out runs/custom_task_4k]

Every run is `fl-userdp compare` / `fl-userdp run --backend inprocess` with
`model.name=experiments.custom_task.tabular:make_task` (4,096 users, 128 held-out users, 30 rounds,
q = 0.125, the same q and k for both modes, σ calibrated per mode for (ε, δ) = (4, 1e-5)).
Tuning (seed 0): `compare` over server-lr × clip-norm × k; per mode and k the setting with the lowest
held-out loss is re-run with `run --mode` on seeds 1-3 (other users, other initial weights); ⚑ marks a
choice on an edge of the grid.
Held-out loss and accuracy are over all held-out users' rows (`tabular.report`). Writes
`experiments/custom_task/results.jsonl` (one line per run) and prints the markdown tables.
"""
from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from experiments.custom_task.tabular import report  # noqa: E402

SPEC = "experiments.custom_task.tabular:make_task"
FIXED = {"model.name": SPEC, "privacy.target-epsilon": 4, "privacy.delta": 1e-5, "privacy.sampling-rate": 0.125,
         "data.num-users": 4096, "data.heldout-users": 128, "sim.users-per-node": 1024, "train.rounds": 30}
GRID = {"train.server-lr": [0.01, 0.03, 0.1, 0.3], "privacy.clip-norm": [0.3, 1.0, 3.0],
        "privacy.max-examples-per-user": [2, 8]}
FINAL_SEEDS = (1, 2, 3)


def name(settings: dict) -> str:
    return "_".join(f"{k.split('.')[-1]}={v}" for k, v in settings.items())


def fl_userdp(command: str, out: Path, settings: dict, seed: int, mode: str | None = None) -> list[str]:
    args = [str(Path(sys.executable).with_name("fl-userdp")), command, "--backend", "inprocess", "--out", str(out),
            "--seed", str(seed)]
    if mode:
        args += ["--mode", mode]
    for key, value in {**FIXED, **settings}.items():
        args += ["--set", f"{key}={value}"]
    subprocess.run(args, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return args


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/custom_task_4k")
    a = ap.parse_args()
    out, lines = ROOT / a.out, []
    best: dict[tuple[str, int], tuple[float, dict]] = {}
    for values in itertools.product(*GRID.values()):
        settings = dict(zip(GRID, values))
        folder = out / "tune" / name(settings)
        if not (folder / "summary.json").exists():
            fl_userdp("compare", folder, settings, 0)
        for mode, row in report(folder).items():
            if mode == "initial":
                continue
            lines.append({"phase": "tune", "seed": 0, "mode": mode, **settings, **row})
            key = (mode, settings["privacy.max-examples-per-user"])
            if key not in best or row["loss"] < best[key][0]:
                best[key] = (row["loss"], settings)
    for (mode, k), (_, settings) in sorted(best.items()):
        for seed in FINAL_SEEDS:
            folder = out / "final" / f"{mode}_{name(settings)}_seed{seed}"
            if not (folder / "summary.json").exists():
                fl_userdp("run", folder, settings, seed, mode)
            rows = report(folder)
            lines.append({"phase": "final", "seed": seed, "mode": mode, **settings, **rows[mode],
                          "initial_accuracy": rows["initial"]["accuracy"],
                          "noise_multiplier": json.loads((folder / "summary.json").read_text())
                          ["noise_multipliers"][mode]})
    (HERE / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    print("| mode | k | server-lr | C | σ | held-out loss | held-out accuracy | ε |")
    print("|---|---|---|---|---|---|---|---|")
    for (mode, k), (_, s) in sorted(best.items()):
        fin = [r for r in lines if r["phase"] == "final" and r["mode"] == mode and r["privacy.max-examples-per-user"] == k]
        loss = [r["loss"] for r in fin]
        acc = [r["accuracy"] for r in fin]
        mean = lambda v: sum(v) / len(v)  # noqa: E731
        sd = lambda v: (sum((x - mean(v)) ** 2 for x in v) / (len(v) - 1)) ** 0.5  # noqa: E731
        edge = any(s[key] in (GRID[key][0], GRID[key][-1]) for key in ("train.server-lr", "privacy.clip-norm"))
        print(f"| {mode.upper()} | {k} | {s['train.server-lr']} | {s['privacy.clip-norm']}{' ⚑' if edge else ''} | "
              f"{fin[0]['noise_multiplier']:.3f} | {mean(loss):.3f} ± {sd(loss):.3f} | "
              f"{mean(acc):.3f} ± {sd(acc):.3f} | {max(r['epsilon'] for r in fin):.3f} |")


if __name__ == "__main__":
    main()
