"""Active-learning benchmark: how many labels each query strategy needs.

    python -m bench.active_learning [--seeds 5] [--max-labels 400] [--step 10] [--epochs 60]

A simulated annotator answers from the digits ground truth. Start from 20 random labels of
the pool, acquire `--step` labels with each strategy, retrain, evaluate on the fixed
held-out test split of the digits workspace, up to `--max-labels`; every strategy, several
seeds. The training runs in-process for speed but it is the pipeline's own code
(`pipelines.train.fit` on the labels in the order `pipelines.prepare` writes them,
`pipelines.evaluate.score_predictions`), the service's own forward pass
(`serving.inference.LoadedModel.predict`: probabilities and embeddings) and the loop's own
selection (`pipelines.strategies.pool_order`); tests/e2e/test_active_learning.py checks that
the loop, through a real Label Studio, hands annotators the tasks `select_rounds` picks.
Writes bench/results/active_learning.json and a learning-curve PNG (mean ± std per
strategy), and prints the labels each strategy needs to reach 90% and 95% and the ratio
to random.

Curves run in `--jobs` worker processes (one TensorFlow thread each) and are appended to
active_learning.partial.jsonl as they finish, so an interrupted run resumes. With
`--epochs 20` (and the pipeline's `min_steps` 400) all 25 curves took 97 min on 2 cores
here (partly shared); the defaults (5 seeds to 400 labels in steps of 10, the pipeline's 60
epochs) about 1.5x that. The JSON records the configuration that produced it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.params import TrainParams
from pipelines.strategies import STRATEGY_NAMES

ROOT = Path(__file__).resolve().parents[1]
TARGETS = (0.90, 0.95)


@dataclass(frozen=True)
class DigitsSplit:
    """The digits workspace's split: the train split (seed + pool, by image name) and the
    held-out test split."""

    classes: list[str]
    train_names: list[str]
    train_images: list
    train_y: np.ndarray
    test_images: list
    test_y: np.ndarray


def load_digits_split(seed_split: int = 0) -> DigitsSplit:
    """The digits workspace's split (same function, same seed as `labelloop init`)."""
    from loop.starter import digits_images
    from loop.workspace import _split
    from pipelines.images import decode_image

    images = digits_images()
    classes = sorted({i.label for i in images}, key=int)
    test, seed, pool = _split(images, classes, 2, 0.25, seed_split)
    train = sorted(seed + pool, key=lambda i: i.name)
    decode = lambda items: [decode_image(i.png) for i in items]  # noqa: E731
    labels = lambda items: np.array([classes.index(i.label) for i in items])  # noqa: E731
    return DigitsSplit(classes, [i.name for i in train], decode(train), labels(train), decode(test), labels(test))


def acquire(strategy: str, model, pool_images, pool_idx, labeled_idx, step, seed, round_no):
    """The next `step` pool indices under `strategy`: what the loop queues first
    (`pipelines.strategies.pool_order`, the loop's own selection)."""
    from pipelines.strategies import pool_order

    if strategy == "random":  # needs no model outputs
        rng = np.random.default_rng(seed * 1000 + round_no)
        return [int(i) for i in rng.choice(pool_idx, size=min(step, len(pool_idx)), replace=False)]
    probs, embeddings = model.predict([pool_images[i] for i in pool_idx])
    labeled_embeddings = None
    if strategy == "diverse_margin":
        _, labeled_embeddings = model.predict([pool_images[i] for i in labeled_idx])
    order = pool_order(strategy, probs, embeddings=embeddings, labeled_embeddings=labeled_embeddings,
                       batch_size=step)
    return [int(pool_idx[i]) for i in order[:step]]


def train_and_evaluate(data: DigitsSplit, labeled: list[int], train: TrainParams, tag: str):
    """The pipeline's training on `labeled` and its evaluation on the held-out split.

    The training rows are in image-name order, as `pipelines.prepare` writes them (the
    digits train split is sorted by name), so a seeded run trains the same model as the
    loop's `dvc repro` on the same labels."""
    from pipelines.evaluate import score_predictions
    from pipelines.images import preprocess
    from pipelines.params import DataParams, Params
    from pipelines.train import fit
    from serving.inference import LoadedModel

    params = Params(data=DataParams(classes=data.classes, image_size=8), train=train)
    rows = sorted(labeled)
    keras_model, _ = fit(params, preprocess([data.train_images[i] for i in rows], 8), data.train_y[rows])
    model = LoadedModel(tag=tag, classes=data.classes, image_size=8, keras_model=keras_model)
    probs, _ = model.predict(data.test_images)
    metrics = score_predictions(data.classes, data.test_y, np.argmax(probs, axis=1), len(labeled))
    return model, metrics.accuracy


def _unlabeled(data: DigitsSplit, labeled: list[int]) -> np.ndarray:
    return np.array(sorted(set(range(len(data.train_images))) - set(labeled)))


def select_rounds(strategy: str, data: DigitsSplit, labeled: list[int], *, rounds: int, step: int,
                  train: TrainParams) -> list[list[int]]:
    """What the loop hands annotators in each of `rounds` rounds, from the labeled set
    `labeled` (train-split indices), in queue order. Like the loop, a retrained model
    replaces the serving one only if its held-out accuracy is not lower (the promotion
    gate); the serving model scores the pool."""
    labeled = list(labeled)
    picked: list[list[int]] = []
    serving, serving_accuracy = None, -1.0
    for round_no in range(rounds):
        model, accuracy = train_and_evaluate(data, labeled, train, f"round-{round_no}")
        if accuracy >= serving_accuracy:
            serving, serving_accuracy = model, accuracy
        batch = acquire(strategy, serving, data.train_images, _unlabeled(data, labeled), labeled, step,
                        train.seed, round_no)
        picked.append(batch)
        labeled += batch
    return picked


def run_curve(strategy: str, seed: int, data: DigitsSplit, cfg: dict) -> list[tuple[int, float]]:
    """Held-out accuracy after each round (every retrained model, no promotion gate)."""
    rng = np.random.default_rng(seed)
    labeled = [int(i) for i in rng.choice(len(data.train_images), size=cfg["start"], replace=False)]
    train = TrainParams(epochs=cfg["epochs"], min_steps=cfg["min_steps"], seed=seed)
    curve = []
    round_no = 0
    while True:
        model, accuracy = train_and_evaluate(data, labeled, train, f"bench-{strategy}-{seed}")
        curve.append((len(labeled), round(accuracy, 4)))
        if len(labeled) >= cfg["max_labels"]:
            return curve
        labeled += acquire(strategy, model, data.train_images, _unlabeled(data, labeled), labeled,
                           cfg["step"], seed, round_no)
        round_no += 1


# --- parallel workers: one TensorFlow thread each (the small CNN's steps are overhead-bound,
# so N single-threaded processes beat one process with N threads) --------------------------
_DATA = None


def _worker_init() -> None:
    global _DATA
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    _DATA = load_digits_split()


def _worker_curve(strategy: str, seed: int, cfg: dict) -> tuple[str, int, list, float]:
    started = time.perf_counter()
    curve = run_curve(strategy, seed, _DATA, cfg)
    return strategy, seed, curve, time.perf_counter() - started


def labels_to_reach(curves: list[list[tuple[int, float]]], target: float) -> float | None:
    """Mean over seeds of the first label count reaching `target`; None if a seed never does."""
    firsts = []
    for curve in curves:
        hit = next((n for n, acc in curve if acc >= target), None)
        if hit is None:
            return None
        firsts.append(hit)
    return float(np.mean(firsts))


def plot(results: dict, out: Path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, curves in results.items():
        xs = [n for n, _ in curves[0]]
        accs = np.array([[a for _, a in c] for c in curves])
        mean, std = accs.mean(axis=0), accs.std(axis=0)
        ax.plot(xs, mean, label=name)
        ax.fill_between(xs, mean - std, mean + std, alpha=0.15)
    for target in TARGETS:
        ax.axhline(target, color="grey", linewidth=0.6, linestyle="--")
    ax.set_xlabel("labels")
    ax.set_ylabel("held-out accuracy")
    ax.set_title(f"digits: active learning, {args.seeds} seeds, +{args.step} per round, "
                 f"{args.epochs} epochs (at least {args.min_steps} steps)")
    ax.set_ylim(0.5, 1.0)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def _curve_key(cfg: dict, strategy: str, seed: int) -> str:
    return json.dumps({**{k: cfg[k] for k in ("start", "step", "max_labels", "epochs", "min_steps")},
                       "strategy": strategy, "seed": seed}, sort_keys=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--start", type=int, default=20)
    parser.add_argument("--step", type=int, default=10)
    parser.add_argument("--max-labels", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=60, help="the pipeline's default; fewer for a quick run")
    parser.add_argument("--min-steps", type=int, default=TrainParams().min_steps,
                        help="the pipeline's train.min_steps (0: epochs only)")
    parser.add_argument("--strategies", default=",".join(STRATEGY_NAMES))
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "active_learning.json")
    args = parser.parse_args()
    cfg = {"start": args.start, "step": args.step, "max_labels": args.max_labels, "epochs": args.epochs,
           "min_steps": args.min_steps}
    strategies = [s for s in args.strategies.split(",") if s]
    unknown = sorted(set(strategies) - set(STRATEGY_NAMES))
    if unknown:
        parser.error(f"unknown strategies {unknown}; choose from {', '.join(STRATEGY_NAMES)}")
    # Finished curves are appended here as they come, so an interrupted run resumes.
    partial = args.out.with_suffix(".partial.jsonl")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    done: dict[str, list] = {}
    if partial.exists():
        for line in partial.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                done[row["key"]] = row["curve"]
    results: dict[str, list] = {name: [None] * args.seeds for name in strategies}
    todo = []  # seed by seed, so that an early look at the partial results compares strategies
    for seed in range(args.seeds):
        for name in strategies:
            key = _curve_key(cfg, name, seed)
            if key in done:
                results[name][seed] = [tuple(p) for p in done[key]]
            else:
                todo.append((name, seed))
    print(f"{len(todo)} learning curves to run ({len(strategies) * args.seeds - len(todo)} resumed "
          f"from {partial.name}), {args.jobs} worker(s)", flush=True)
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=mp.get_context("spawn"),
                             initializer=_worker_init) as pool:
        futures = [pool.submit(_worker_curve, name, seed, cfg) for name, seed in todo]
        for n, future in enumerate(as_completed(futures), start=1):
            name, seed, curve, seconds = future.result()
            results[name][seed] = curve
            with partial.open("a") as fh:
                fh.write(json.dumps({"key": _curve_key(cfg, name, seed), "curve": curve}) + "\n")
            elapsed = time.perf_counter() - started
            eta = elapsed / n * (len(todo) - n)
            print(f"[{n}/{len(todo)}] {name:>16} seed {seed}: "
                  + " ".join(f"{k}:{a:.3f}" for k, a in curve[::5])
                  + f"  ({seconds:.0f}s; ~{eta / 60:.0f} min left)", flush=True)
    summary = {}
    random_needs = {t: labels_to_reach(results["random"], t) for t in TARGETS} if "random" in results else {}
    for name, curves in results.items():
        final = [c[-1][1] for c in curves]
        entry = {"final_accuracy_mean": round(float(np.mean(final)), 4),
                 "final_accuracy_std": round(float(np.std(final)), 4)}
        for t in TARGETS:
            needs = labels_to_reach(curves, t)
            base = random_needs.get(t)
            entry[f"labels_to_{int(t * 100)}"] = needs
            entry[f"ratio_to_random_{int(t * 100)}"] = round(needs / base, 3) if needs and base else None
            if needs and base is None and "random" in results:
                # Random did not get there within the budget: the ratio is at most this.
                entry[f"ratio_to_random_budget_{int(t * 100)}"] = round(needs / args.max_labels, 3)
        summary[name] = entry
    reached = {n: e["labels_to_95"] for n, e in summary.items() if e["labels_to_95"] is not None}
    winner = min(reached, key=reached.get) if reached else None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    png = args.out.with_suffix(".png")
    plot(results, png, args)
    args.out.write_text(json.dumps({
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "seconds_this_run": round(time.perf_counter() - started, 1),
        "fewest_labels_to_95": winner,
        "summary": summary, "curves": results,
    }, indent=1) + "\n")
    print(f"\n{'strategy':>16}  labels→90%  labels→95%  ×random(95%)  accuracy@{args.max_labels}")
    for name, e in summary.items():
        show = lambda v: f"{v:.0f}" if v is not None else f">{args.max_labels}"  # noqa: E731
        ratio = e["ratio_to_random_95"] or e.get("ratio_to_random_budget_95")
        print(f"{name:>16}  {show(e['labels_to_90']):>10}  {show(e['labels_to_95']):>10}  "
              f"{(f'{ratio:.2f}' if ratio is not None else '-'):>12}  "
              f"{e['final_accuracy_mean']:.3f} ± {e['final_accuracy_std']:.3f}")
    random_final = summary.get("random", {})
    if random_final and random_final.get("labels_to_95") is None:
        print(f"random does not reach 95% within {args.max_labels} labels "
              f"({random_final['final_accuracy_mean']:.3f} at {args.max_labels}); the ratio shown is "
              f"to that budget, an upper bound")
    if winner:
        print(f"fewest labels to 95%: {winner} ({reached[winner]:.0f})")
    partial.unlink(missing_ok=True)  # everything is in the JSON now
    print(f"wrote {args.out} and {png}")


if __name__ == "__main__":
    main()
