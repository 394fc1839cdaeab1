"""Adding images benchmark: one import batch costs what the new images cost, not the pool.

    python -m bench.add_images [--pools 1000,10000] [--new 100] [--repeats 5]

Builds two real workspaces (`labelloop init --images`: git + DVC, a local DVC remote each)
from pools of distinct generated PNGs (32x32 RGB noise, one seed per image), under
bench/.work/add_images (rebuilt every run). Then, side by side in one run and alternating
which pool goes first, adds `--new` fresh images to each pool `--repeats` times and times
`Workspace.add_images` (scan + copy + `dvc add` + git commit: the one data commit) and
the push `labelloop add` makes (`dvc push` of the new batch's `.dvc` files only, its parent
commit being pushed) separately. Each add grows its pool by `--new` images.
Target (the issue): adding 100 images to a 10,000-image pool costs at most 1.5x adding them
to a 1,000-image pool, by the median total (add + push).

Every exception is counted in `errors_total` and listed; a repeat that failed has no
timing. The JSON also holds where the add's time went (`Workspace.dvc_add`, git calls,
the rest: reading the pool index, scanning, copying, writing the shard), per pool; CPU
seconds beside wall seconds (this machine is shared: CPU time is the steadier of the two);
and `full_push`: `--full-push-repeats` more adds per pool pushed the way it was done before
(`dvc push` of every output of HEAD), for comparison. Afterwards `dvc status --cloud`
checks that the batch-only pushes left nothing of HEAD's data off the remote.
Writes bench/results/add_images.json and prints a table (~5 min on 2 cores).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from loop.ingest import scan_images
from loop.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / ".work" / "add_images"
CLASSES = ["cat", "dog"]
TARGET_RATIO = 1.5
#: Disjoint seed ranges: the pools' images, then each added batch's.
NEW_SEED_BASE = 100_000_000


def write_pngs(folder: Path, seeds: range) -> None:
    """One 32x32 RGB noise PNG per seed: distinct content, so no image dedups against another."""
    folder.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        pixels = np.random.default_rng(seed).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels, "RGB").save(folder / f"img-{seed:09d}.png")


def create_workspace(root: Path, folder: Path, remote: Path) -> Workspace:
    """`labelloop init --images folder`: the init batch, committed and pushed."""
    found = scan_images(folder, classes=CLASSES)
    try:
        from loop.creation import create_from_images
    except ImportError:  # before workspace creation moved out of `Workspace`
        create_from_images = Workspace.create_from_images
    ws, report = create_from_images(root, classes=CLASSES, found=found, remote_url=str(remote), image_size=8)
    return ws


class PieceTimer:
    """Seconds spent in a workspace's `dvc_add` and `git` calls during one add (patched on
    the instance, so the product code runs unchanged)."""

    def __init__(self, ws: Workspace):
        self.seconds: dict[str, float] = defaultdict(float)
        for attr, piece in (("dvc_add", "dvc_add"), ("_dvc_add", "dvc_add"), ("git", "git")):
            if hasattr(ws, attr):
                setattr(ws, attr, self._timed(getattr(ws, attr), piece))

    def _timed(self, fn, piece: str):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[piece] += time.perf_counter() - started

        return wrapper

    def take(self) -> dict[str, float]:
        out, self.seconds = dict(self.seconds), defaultdict(float)
        return out


def _cpu() -> float:
    """CPU seconds of this process and its finished children (git): less sensitive than wall
    time to other work on a shared machine."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _unpushed(ws: Workspace) -> int:
    """Files of the committed data outputs (images, label shards) missing from the remote
    (`dvc status --cloud` on their .dvc files)."""
    from dvc.repo import Repo

    from kernel.layout import IMAGES_DIR, LABELS_DIR

    targets = sorted(str(p) for d in (IMAGES_DIR, LABELS_DIR) for p in (ws.root / d).glob("*.dvc"))
    with Repo(str(ws.root)) as repo:
        return len(repo.status(targets=targets, cloud=True))


def stats(values: list[float]) -> dict:
    if not values:
        return {"n": 0, "median": None, "p90": None, "min": None, "max": None, "samples": []}
    arr = np.array(values)
    return {"n": len(values), "median": round(float(np.median(arr)), 3),
            "p90": round(float(np.percentile(arr, 90)), 3), "min": round(float(arr.min()), 3),
            "max": round(float(arr.max()), 3), "samples": [round(v, 3) for v in values]}


def _ratio(large: float | None, small: float | None) -> float | None:
    return round(large / small, 3) if large and small else None


def _version(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
    except OSError as exc:
        return f"unavailable: {exc}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pools", default="1000,10000", help="pool sizes, comma-separated (smallest first)")
    parser.add_argument("--new", type=int, default=100, help="images per add")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--full-push-repeats", type=int, default=3,
                        help="extra adds per pool pushed as before: every output of HEAD (for comparison)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "add_images.json")
    args = parser.parse_args()
    sizes = [int(s) for s in args.pools.split(",") if s]
    started = time.perf_counter()
    if WORK.exists():
        shutil.rmtree(WORK)
    WORK.mkdir(parents=True)

    errors: list[dict] = []
    spaces: dict[int, Workspace] = {}
    timers: dict[int, PieceTimer] = {}
    build_s: dict[str, dict] = {}
    for k, size in enumerate(sizes):
        images = WORK / f"images-{size}"
        t0 = time.perf_counter()
        write_pngs(images, range(k * 10_000_000, k * 10_000_000 + size))
        t1 = time.perf_counter()
        ws = create_workspace(WORK / f"ws-{size}", images, WORK / f"remote-{size}")
        t2 = time.perf_counter()
        n_pool = len(ws.pool_images())
        build_s[str(size)] = {"generate_s": round(t1 - t0, 1), "init_and_push_s": round(t2 - t1, 1),
                              "pool_images": n_pool}
        print(f"pool {size}: generated in {t1 - t0:.1f}s, init + push in {t2 - t1:.1f}s "
              f"({n_pool} images in the pool)", flush=True)
        if n_pool != size:
            errors.append({"pool": size, "repeat": None, "step": "init",
                           "error": f"the pool holds {n_pool} images, not {size}"})
        spaces[size], timers[size] = ws, PieceTimer(ws)

    timings: dict[int, dict[str, list[float]]] = {s: defaultdict(list) for s in sizes}
    full_push: dict[int, dict[str, list[float]]] = {s: defaultdict(list) for s in sizes}
    plan = [(r, "product") for r in range(args.repeats)]
    plan += [(args.repeats + r, "full_push") for r in range(args.full_push_repeats)]
    for repeat, variant in plan:
        order = sizes if repeat % 2 == 0 else sizes[::-1]  # alternate which pool goes first
        for size in order:
            ws, timer = spaces[size], timers[size]
            batch_no = sizes.index(size) * len(plan) + repeat
            folder = WORK / f"new-{size}-{repeat}"
            first = NEW_SEED_BASE + batch_no * args.new
            write_pngs(folder, range(first, first + args.new))  # not timed: the user's folder
            step = "add"
            try:
                c0, t0 = _cpu(), time.perf_counter()
                report = ws.add_images(scan_images(folder, classes=CLASSES))
                c1, t1 = _cpu(), time.perf_counter()
                step = "push"
                if variant == "product":  # what `labelloop add` does: only the batch's new outputs
                    ws.push(report.outputs)
                else:  # as before: every output of HEAD
                    ws.push()
                c2, t2 = _cpu(), time.perf_counter()
            except Exception as exc:  # counted and listed, never hidden
                errors.append({"pool": size, "repeat": repeat, "variant": variant, "step": step,
                               "error": f"{type(exc).__name__}: {exc}"})
                print(f"  pool {size} repeat {repeat} ({variant}): {step} FAILED: {exc}", flush=True)
                timer.take()
                continue
            if report.added != args.new or report.commit is None:
                errors.append({"pool": size, "repeat": repeat, "variant": variant, "step": "add",
                               "error": f"added {report.added} of {args.new} (commit {report.commit})"})
            pieces = timer.take()
            t = timings[size] if variant == "product" else full_push[size]
            t["add"].append(t1 - t0)
            t["push"].append(t2 - t1)
            t["total"].append(t2 - t0)
            t["cpu.add"].append(c1 - c0)
            t["cpu.push"].append(c2 - c1)
            t["cpu.total"].append(c2 - c0)
            t["add.dvc_add"].append(pieces.get("dvc_add", 0.0))
            t["add.git"].append(pieces.get("git", 0.0))
            t["add.rest"].append(t1 - t0 - pieces.get("dvc_add", 0.0) - pieces.get("git", 0.0))
            print(f"  pool {size:>6} repeat {repeat} {variant:>8}: add {t1 - t0:6.2f}s (dvc add "
                  f"{pieces.get('dvc_add', 0):.2f}, git {pieces.get('git', 0):.2f})  push {t2 - t1:6.2f}s  "
                  f"total {t2 - t0:6.2f}s  (cpu {c2 - c0:.2f}s)", flush=True)
    if args.repeats:
        # The batch-only pushes left nothing of HEAD's data off the remote.
        for size in sizes:
            try:
                missing = _unpushed(spaces[size])
                if missing:
                    errors.append({"pool": size, "repeat": None, "variant": "product", "step": "verify",
                                   "error": f"{missing} files not on the remote after the batch-only pushes"})
            except Exception as exc:
                errors.append({"pool": size, "repeat": None, "variant": "product", "step": "verify",
                               "error": f"{type(exc).__name__}: {exc}"})

    seconds = {str(s): {k: stats(timings[s][k]) for k in ("add", "push", "total")} for s in sizes}
    cpu_seconds = {str(s): {k: stats(timings[s][f"cpu.{k}"]) for k in ("add", "push", "total")} for s in sizes}
    full_pushed = {str(s): {k: stats(full_push[s][k]) for k in ("add", "push", "total")} for s in sizes}
    breakdown = {str(s): {k: stats(timings[s][k]) for k in ("add.dvc_add", "add.git", "add.rest")} for s in sizes}
    small, large = str(sizes[0]), str(sizes[-1])
    med_small, med_large = seconds[small]["total"]["median"], seconds[large]["total"]["median"]
    ratio = round(med_large / med_small, 3) if med_small and med_large else None
    ratios = {part: (round(seconds[large][part]["median"] / seconds[small][part]["median"], 3)
                     if seconds[small][part]["median"] and seconds[large][part]["median"] else None)
              for part in ("add", "push", "total")}
    ratio_cpu = _ratio(cpu_seconds[large]["total"]["median"], cpu_seconds[small]["total"]["median"])
    ratio_full_push = _ratio(full_pushed[large]["total"]["median"], full_pushed[small]["total"]["median"])
    met = ratio is not None and ratio <= TARGET_RATIO and not errors
    import dvc

    result = {
        "pool_sizes": sizes,
        "new_images": args.new,
        "repeats": args.repeats,
        "seconds": seconds,
        "ratio_total_10k_over_1k": ratio,
        "ratios_median_large_over_small": ratios,
        "target_ratio": TARGET_RATIO,
        "target_met": met,
        "errors_total": len(errors),
        "errors": errors,
        "ratio_cpu_total_10k_over_1k": ratio_cpu,
        "cpu_seconds": cpu_seconds,
        "add_breakdown_seconds": breakdown,
        "full_push": {
            "what": "for comparison, the push before: dvc push of every output of HEAD",
            "repeats": args.full_push_repeats, "seconds": full_pushed,
            "ratio_total_10k_over_1k": ratio_full_push,
            "target_met": ratio_full_push is not None and ratio_full_push <= TARGET_RATIO,
        },
        "build": build_s,
        "config": {"pools": sizes, "new": args.new, "repeats": args.repeats, "classes": CLASSES,
                   "image": "32x32 RGB noise PNG, one seed each", "remote": "local directory",
                   "order": "alternating which pool goes first", "pool_grows_by_each_add": True,
                   "ratio_of": f"median total (add + push), pool {large} over pool {small}"},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "dvc": dvc.__version__, "git": _version(["git", "--version"])},
        "seconds_this_run": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")

    print(f"\n{'pool':>7}  {'add med/p90 (s)':>16}  {'push med/p90 (s)':>16}  {'total med/p90 (s)':>17}")
    for s in sizes:
        row = seconds[str(s)]
        cell = lambda k: f"{row[k]['median']}/{row[k]['p90']}"  # noqa: E731
        print(f"{s:>7}  {cell('add'):>16}  {cell('push'):>16}  {cell('total'):>17}")
    print(f"ratio {large}/{small} (median total): {ratio}  (add {ratios['add']}, push {ratios['push']}); "
          f"target <= {TARGET_RATIO}: {'met' if met else 'not met'}; errors: {len(errors)}")
    if args.full_push_repeats:
        print("before (push every output of HEAD): " + ", ".join(
            f"{s}: total {full_pushed[str(s)]['total']['median']}s (push {full_pushed[str(s)]['push']['median']}s)"
            for s in sizes) + f"; ratio {ratio_full_push}")
    print(f"cpu-time ratio (median total): {ratio_cpu}")
    print(f"wrote {args.out} ({result['seconds_this_run']:.0f}s)")


if __name__ == "__main__":
    main()
