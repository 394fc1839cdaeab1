"""Active-learning benchmark: how many labels each query strategy needs.

    python -m bench.active_learning [--seeds 5] [--max-labels 400] [--step 10] [--epochs 60]

A simulated annotator answers from the digits ground truth. Start from 20 random labels of
the pool, acquire `--step` labels with each strategy, retrain, evaluate on the fixed
held-out test split of the digits workspace, up to `--max-labels`; every strategy, several
seeds. The training runs in-process for speed but it is the pipeline's own code
(`pipelines.train.fit`, `pipelines.evaluate.score_predictions`), the service's own forward
pass (`serving.inference.LoadedModel.predict`: probabilities and embeddings) and the
loop's own strategies (`pipelines.strategies`). Writes bench/results/active_learning.json
and a learning-curve PNG (mean ± std per strategy), and prints the labels each strategy
needs to reach 90% and 95% and the ratio to random.

The defaults are the full benchmark (5 seeds to 400 labels in steps of 10, the
pipeline's 60 epochs): hours on 2 CPU cores. `--seeds/--max-labels/--epochs` shrink it;
the JSON records the configuration that produced it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STRATEGY_NAMES = ("random", "least_confidence", "margin", "entropy", "diverse_margin")
TARGETS = (0.90, 0.95)


def load_digits_split(seed_split: int = 0):
    """The digits workspace's split (same function, same seed): pool and held-out test."""
    from loop.starter import digits_images
    from loop.workspace import _split
    from pipelines.images import decode_image

    images = digits_images()
    classes = sorted({i.label for i in images}, key=int)
    test, seed, pool = _split(images, classes, 2, 0.25, seed_split)
    train = sorted(seed + pool, key=lambda i: i.name)
    decode = lambda items: [decode_image(i.png) for i in items]  # noqa: E731
    labels = lambda items: np.array([classes.index(i.label) for i in items])  # noqa: E731
    return classes, decode(train), labels(train), decode(test), labels(test)


def acquire(strategy: str, model, pool_images, pool_idx, labeled_idx, step, seed, round_no):
    """The next `step` pool indices under `strategy` (what the loop would queue first)."""
    from pipelines.strategies import diverse_margin_order, get_strategy

    if strategy == "random":
        rng = np.random.default_rng(seed * 1000 + round_no)
        return [int(i) for i in rng.choice(pool_idx, size=min(step, len(pool_idx)), replace=False)]
    probs, embeddings = model.predict([pool_images[i] for i in pool_idx])
    if strategy == "diverse_margin":
        _, labeled_embeddings = model.predict([pool_images[i] for i in labeled_idx])
        order = diverse_margin_order(probs, embeddings, labeled_embeddings=labeled_embeddings, batch_size=step)
    else:
        order = np.argsort(get_strategy(strategy).score(probs), kind="stable")
    return [int(pool_idx[i]) for i in order[:step]]


def run_curve(strategy: str, seed: int, data, args) -> list[tuple[int, float]]:
    from pipelines.evaluate import score_predictions
    from pipelines.images import preprocess
    from pipelines.params import DataParams, Params, TrainParams
    from pipelines.train import fit
    from serving.inference import LoadedModel

    classes, train_images, train_y, test_images, test_y = data
    params = Params(data=DataParams(classes=classes, image_size=8),
                    train=TrainParams(epochs=args.epochs, seed=seed))
    x_all = preprocess(train_images, 8)
    rng = np.random.default_rng(seed)
    labeled = [int(i) for i in rng.choice(len(train_images), size=args.start, replace=False)]
    curve = []
    round_no = 0
    while True:
        keras_model, _ = fit(params, x_all[labeled], train_y[labeled])
        model = LoadedModel(tag=f"bench-{strategy}-{seed}", classes=classes, image_size=8, keras_model=keras_model)
        probs, _ = model.predict(test_images)
        metrics = score_predictions(classes, test_y, np.argmax(probs, axis=1), len(labeled))
        curve.append((len(labeled), round(metrics.accuracy, 4)))
        if len(labeled) >= args.max_labels:
            return curve
        pool_idx = np.array(sorted(set(range(len(train_images))) - set(labeled)))
        labeled += acquire(strategy, model, train_images, pool_idx, labeled, args.step, seed, round_no)
        round_no += 1


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
    ax.set_title(f"digits: active learning, {args.seeds} seeds, +{args.step} per round, {args.epochs} epochs")
    ax.set_ylim(0.5, 1.0)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--start", type=int, default=20)
    parser.add_argument("--step", type=int, default=10)
    parser.add_argument("--max-labels", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=60, help="the pipeline's default; fewer for a quick run")
    parser.add_argument("--strategies", default=",".join(STRATEGY_NAMES))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "active_learning.json")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    data = load_digits_split()
    strategies = [s for s in args.strategies.split(",") if s]
    results: dict[str, list] = {}
    started = time.perf_counter()
    for name in strategies:
        results[name] = []
        for seed in range(args.seeds):
            t = time.perf_counter()
            curve = run_curve(name, seed, data, args)
            results[name].append(curve)
            print(f"{name:>16} seed {seed}: " + " ".join(f"{n}:{a:.3f}" for n, a in curve[::4])
                  + f"  ({time.perf_counter() - t:.0f}s)", flush=True)
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
        summary[name] = entry
    args.out.parent.mkdir(parents=True, exist_ok=True)
    png = args.out.with_suffix(".png")
    plot(results, png, args)
    args.out.write_text(json.dumps({
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "seconds": round(time.perf_counter() - started, 1),
        "summary": summary, "curves": results,
    }, indent=1) + "\n")
    print(f"\n{'strategy':>16}  labels→90%  labels→95%  ×random(95%)  accuracy@{args.max_labels}")
    for name, e in summary.items():
        show = lambda v: f"{v:.0f}" if v is not None else f">{args.max_labels}"  # noqa: E731
        ratio = e["ratio_to_random_95"]
        print(f"{name:>16}  {show(e['labels_to_90']):>10}  {show(e['labels_to_95']):>10}  "
              f"{(f'{ratio:.2f}' if ratio is not None else '-'):>12}  "
              f"{e['final_accuracy_mean']:.3f} ± {e['final_accuracy_std']:.3f}")
    print(f"wrote {args.out} and {png}")


if __name__ == "__main__":
    main()
