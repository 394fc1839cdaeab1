"""Label-quality benchmark: does finding suspect labels pay, and does class balance help a rare class?

    python -m bench.label_quality [--seeds 5] [--labels 300] [--noise 0.15] [--kind confusing]

Digits (the workspace's split: `bench.active_learning.load_digits_split`), margin queue,
`--labels` total labeling cost, where a review costs one label. A simulated annotator
(`labeling.noise.AnnotatorNoise`) answers wrongly at `--noise`, either between digits people
confuse (1/7, 3/8, 4/9; the headline, `--kind confusing`) or uniformly (also run, reported
under "uniform"). Like the product, the queue starts in the cold-start diversity order
(`pipelines.strategies.cold_start_order` on the pixels) until every class has
`train.min_per_class` labels, then rounds of `query_batch_size` tasks in margin order
(`pipelines.strategies.pool_order`). Three arms per seed, at equal cost:

- clean: an annotator who never errs;
- noisy: the noisy annotator, nothing checked;
- review: the noisy annotator; after every round (a collect) the labels not judged before are
  judged by the loop's own suspect finder (`loop.quality.find_label_issues`: cleanlab on
  5-fold out-of-sample probabilities of an SVM on the pixels, the features the loop uses
  for the small-CNN family), once there are `quality_min_labels_per_class` labels per class
  (the product's default); suspects are held out of training and served first in the next
  round to a second annotator with the same noise (another seed); the review's label wins
  (the default label policy, `latest`); a reviewed image is never judged again.

Then, on a pool where one class is 3% of the images (a different class per seed), a clean
annotator and the margin queue, with and without `class_balance`
(`pipelines.strategies.class_balanced_order` through `pool_order`): that class's recall on the
held-out split.

Training is cheap by choice: a linear head on fixed features (scikit-learn's
LogisticRegression on the 8x8 pixels) stands in for the pipeline's CNN, so 5 seeds of all
arms run in minutes instead of hours (`make bench-al`'s CNN curves take ~95 min); the
selection, the suspect finder, the class balance and the noise are the product's own code.

Writes bench/results/label_quality.json: `caught_share` (of the noisy annotator's wrong
labels, the share flagged as suspects), `reviews_per_caught_error` (suspects flagged, each
one review, per wrong label caught), `accuracy_points_below_clean` (the review arm's
held-out accuracy below the clean arm's, in points, at equal cost), `rare_class_recall`,
per-seed data, the configuration, and whether each goal was reached.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GOALS = {"caught_share": 0.80, "reviews_per_caught_error": 2.0, "accuracy_points_below_clean": 1.0}
RARE_SHARE = 0.03


@dataclass
class Data:
    classes: list[str]
    names: list[str]
    x: np.ndarray  # the train split's pixels (the product's preprocessing), flattened
    y: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load() -> Data:
    from bench.active_learning import load_digits_split
    from pipelines.images import preprocess
    from pipelines.params import DataParams

    split = load_digits_split()
    spec = DataParams(classes=split.classes, image_size=8).input_spec
    flat = lambda images: preprocess(images, spec).reshape(len(images), -1).astype(np.float64)  # noqa: E731
    return Data(split.classes, split.train_names, flat(split.train_images), split.train_y,
                flat(split.test_images), split.test_y)


def _model(x: np.ndarray, y: list[int]):
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LogisticRegression(max_iter=1000).fit(x, y)


def _probabilities(model, x: np.ndarray, n_classes: int) -> np.ndarray:
    """Probabilities over every class (a class the model never saw: 0)."""
    out = np.zeros((len(x), n_classes))
    out[:, model.classes_] = model.predict_proba(x)
    return out


@dataclass
class Run:
    accuracy: float = 0.0
    labels: int = 0  # first answers bought
    reviews: int = 0  # reviews bought
    errors: int = 0  # the annotator's wrong first answers
    flagged: int = 0  # suspects found (each one review)
    caught: int = 0  # of those, wrong first answers
    reviewer_errors: int = 0  # reviews that answered wrongly
    held_at_end: int = 0  # suspects still waiting for review when the budget ran out
    rare_recall: float | None = None
    rare_class: str | None = None
    seconds: float = 0.0
    curve: list = field(default_factory=list)  # (cost, accuracy) per round


def simulate(data: Data, pool: np.ndarray, seed: int, *, budget: int, noise: float, kind: str, review: bool,
             class_balance: bool = False, rare: str | None = None) -> Run:
    """One workspace: the queue, the annotators, the collects and the model, to `budget`."""
    from kernel.settings import Settings
    from labeling.noise import AnnotatorNoise
    from loop.quality import find_label_issues, min_labels_to_judge
    from pipelines.params import TrainParams
    from pipelines.strategies import cold_start_order, pool_order

    started = time.perf_counter()
    defaults = Settings.model_fields
    batch_size = defaults["query_batch_size"].default
    min_labels = min_labels_to_judge(defaults["quality_min_labels_per_class"].default, data.classes)
    min_per_class = TrainParams().min_per_class
    classes, n_classes = data.classes, len(data.classes)
    annotator = AnnotatorNoise(noise, kind, seed=seed)
    reviewer = AnnotatorNoise(noise, kind, seed=seed + 1000)
    truth = lambda i: classes[int(data.y[i])]  # noqa: E731
    labels: dict[int, str] = {}  # image -> its current label
    unjudged: set[int] = set()
    flagged: set[int] = set()
    held: list[int] = []  # open suspects, in the order they were found (served first)
    run = Run(rare_class=rare)
    wrong_first: set[int] = set()
    cold = [int(pool[k]) for k in cold_start_order(data.x[pool], seed=seed, head=1000)]
    model = None

    def cost() -> int:
        return run.labels + run.reviews

    while cost() < budget:
        # The tasks this round: reviews first (top of the queue), then the queue's order.
        while held and cost() < budget:
            i = held.pop(0)
            answer = reviewer.answer(data.names[i], truth(i), classes)
            labels[i] = answer
            run.reviews += 1
            run.reviewer_errors += answer != truth(i)
        if model is None:
            batch = [i for i in cold if i not in labels][:1]  # cold start: one at a time until every class has 2
        else:
            left = np.array([i for i in pool if i not in labels])
            counts = np.bincount([classes.index(v) for v in labels.values()], minlength=n_classes)
            order = pool_order("margin", _probabilities(model, data.x[left], n_classes), batch_size=batch_size,
                               class_balance=class_balance, labeled_counts=counts)
            batch = [int(left[k]) for k in order[:batch_size]]
        for i in batch:
            if cost() >= budget:
                break
            answer = annotator.answer(data.names[i], truth(i), classes)
            labels[i] = answer
            unjudged.add(i)
            run.labels += 1
            if answer != truth(i):
                wrong_first.add(i)
        # The collect: judge what was not judged, once there are enough labels.
        if review and len(labels) >= min_labels and unjudged:
            names = [i for i in sorted(labels) if i not in held]
            candidates = np.array([i in unjudged and i not in flagged for i in names])
            for issue in find_label_issues(data.x[names], [labels[i] for i in names], classes, candidates=candidates):
                i = names[issue.index]
                flagged.add(i)
                held.append(i)
            unjudged.clear()
        counts = np.bincount([classes.index(v) for v in labels.values()], minlength=n_classes)
        if model is None and counts.min() < min_per_class:
            continue  # the first model waits for every class (the cold start goes on)
        train = [i for i in sorted(labels) if i not in held]
        model = _model(data.x[train], [classes.index(labels[i]) for i in train])
        run.curve.append((cost(), round(float((model.predict(data.x_test) == data.y_test).mean()), 4)))
    run.accuracy = run.curve[-1][1]
    run.errors, run.flagged = len(wrong_first), len(flagged)
    run.caught = len(flagged & wrong_first)
    run.held_at_end = len(held)
    if rare is not None:
        rows = data.y_test == classes.index(rare)
        run.rare_recall = round(float((model.predict(data.x_test[rows]) == data.y_test[rows]).mean()), 4)
    run.seconds = round(time.perf_counter() - started, 1)
    return run


def imbalanced_pool(data: Data, rare: str, seed: int) -> np.ndarray:
    """Every train-split image, but the class `rare` thinned to RARE_SHARE of the pool."""
    rare_idx = np.flatnonzero(data.y == data.classes.index(rare))
    others = np.flatnonzero(data.y != data.classes.index(rare))
    keep = int(round(RARE_SHARE / (1 - RARE_SHARE) * len(others)))
    chosen = np.random.default_rng(seed).choice(rare_idx, size=keep, replace=False)
    return np.sort(np.concatenate([others, chosen]))


def _mean(values: list[float]) -> float:
    return round(float(np.mean(values)), 4)


def noise_arms(data: Data, seeds: int, budget: int, noise: float, kind: str, log) -> dict:
    pool = np.arange(len(data.names))
    per_seed = []
    for seed in range(seeds):
        arms = {arm: simulate(data, pool, seed, budget=budget, noise=0.0 if arm == "clean" else noise, kind=kind,
                              review=arm == "review") for arm in ("clean", "noisy", "review")}
        row = {arm: {k: v for k, v in vars(r).items() if k not in ("rare_recall", "rare_class")}
               for arm, r in arms.items()}
        per_seed.append(row)
        r = arms["review"]
        log(f"{kind} seed {seed}: accuracy clean {arms['clean'].accuracy:.4f} noisy {arms['noisy'].accuracy:.4f} "
            f"review {r.accuracy:.4f}; {r.errors} wrong labels, {r.flagged} suspects, {r.caught} caught "
            f"({r.labels} labels + {r.reviews} reviews; {sum(a.seconds for a in arms.values()):.0f}s)")
    review = [s["review"] for s in per_seed]
    errors, caught, flagged = (sum(r[k] for r in review) for k in ("errors", "caught", "flagged"))
    acc = {arm: [s[arm]["accuracy"] for s in per_seed] for arm in ("clean", "noisy", "review")}
    return {
        "caught_share": round(caught / errors, 4) if errors else None,
        "reviews_per_caught_error": round(flagged / caught, 3) if caught else None,
        "accuracy_points_below_clean": round(float(np.mean(acc["clean"]) - np.mean(acc["review"])) * 100, 2),
        "accuracy": {arm: _mean(v) for arm, v in acc.items()},
        "accuracy_std": {arm: round(float(np.std(v)), 4) for arm, v in acc.items()},
        "noisy_points_below_clean": round(float(np.mean(acc["clean"]) - np.mean(acc["noisy"])) * 100, 2),
        "injected_wrong_labels": errors, "suspects_total": flagged, "caught_total": caught,
        "reviews_done": sum(r["reviews"] for r in review), "reviewer_errors": sum(r["reviewer_errors"] for r in review),
        "suspects_unreviewed_at_end": sum(r["held_at_end"] for r in review),
        "labels_bought_with_review": _mean([r["labels"] for r in review]),
        "per_seed": per_seed,
    }


def rare_arms(data: Data, seeds: int, budget: int, log) -> dict:
    per_seed = []
    for seed in range(seeds):
        rare = data.classes[(2 * seed + 1) % len(data.classes)]
        pool = imbalanced_pool(data, rare, seed)
        runs = {name: simulate(data, pool, seed, budget=budget, noise=0.0, kind="uniform", review=False,
                               class_balance=balance, rare=rare)
                for name, balance in (("without_balance", False), ("with_balance", True))}
        per_seed.append({"rare_class": rare, "pool": int(len(pool)),
                         "rare_in_pool": int((data.y[pool] == data.classes.index(rare)).sum()),
                         **{name: {"rare_recall": r.rare_recall, "accuracy": r.accuracy, "seconds": r.seconds}
                            for name, r in runs.items()}})
        log(f"rare class {rare} ({per_seed[-1]['rare_in_pool']} of {len(pool)}): recall without balance "
            f"{runs['without_balance'].rare_recall:.3f}, with {runs['with_balance'].rare_recall:.3f}; accuracy "
            f"{runs['without_balance'].accuracy:.4f} / {runs['with_balance'].accuracy:.4f}")
    return {
        "with_balance": _mean([s["with_balance"]["rare_recall"] for s in per_seed]),
        "without_balance": _mean([s["without_balance"]["rare_recall"] for s in per_seed]),
        "accuracy_with_balance": _mean([s["with_balance"]["accuracy"] for s in per_seed]),
        "accuracy_without_balance": _mean([s["without_balance"]["accuracy"] for s in per_seed]),
        "per_seed": per_seed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--labels", type=int, default=300, help="total labeling cost (a review costs one label)")
    parser.add_argument("--noise", type=float, default=0.15)
    parser.add_argument("--kind", choices=("confusing", "uniform"), default="confusing", help="the headline's noise")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "label_quality.json")
    args = parser.parse_args()
    from kernel.settings import Settings

    started = time.perf_counter()
    log = lambda line: print(f"[{time.perf_counter() - started:6.0f}s] {line}", flush=True)  # noqa: E731
    data = load()
    other = "uniform" if args.kind == "confusing" else "confusing"
    headline = noise_arms(data, args.seeds, args.labels, args.noise, args.kind, log)
    second = noise_arms(data, args.seeds, args.labels, args.noise, other, log)
    rare = rare_arms(data, args.seeds, args.labels, log)
    defaults = Settings.model_fields
    report = {
        "caught_share": headline["caught_share"],
        "reviews_per_caught_error": headline["reviews_per_caught_error"],
        "accuracy_points_below_clean": headline["accuracy_points_below_clean"],
        "rare_class_recall": {"with_balance": rare["with_balance"], "without_balance": rare["without_balance"]},
        "injected_wrong_labels": headline["injected_wrong_labels"],
        "goals": {
            "caught_share >= 0.80": bool(headline["caught_share"] is not None
                                        and headline["caught_share"] >= GOALS["caught_share"]),
            "reviews_per_caught_error <= 2": bool(headline["reviews_per_caught_error"] is not None
                                                  and headline["reviews_per_caught_error"] <= GOALS["reviews_per_caught_error"]),
            "accuracy_points_below_clean <= 1": bool(headline["accuracy_points_below_clean"]
                                                     <= GOALS["accuracy_points_below_clean"]),
            "rare_class_recall with_balance > without_balance": bool(rare["with_balance"] > rare["without_balance"]),
        },
        "config": {
            "dataset": "scikit-learn digits, the workspace's train split as the pool, its held-out split (450) for accuracy",
            "seeds": args.seeds, "total_cost": args.labels, "noise_rate": args.noise, "noise_kind": args.kind,
            "noise_kinds": {"confusing": "wrong answers go to the paired digit (1/7, 3/8, 4/9), other digits uniform",
                            "uniform": "wrong answers uniform over the other digits"},
            "reviewer": "a second annotator with the same noise (another seed); the review's label wins (label_policy latest)",
            "queue": "cold-start diversity order until every class has train.min_per_class labels, then margin, "
                     f"rounds of query_batch_size={defaults['query_batch_size'].default}",
            "suspect_finder": "loop.quality.find_label_issues: cleanlab prune_by_noise_rate on 5-fold out-of-sample "
                              "probabilities of an RBF SVM on the pixels; each label judged once; from "
                              f"{defaults['quality_min_labels_per_class'].default} labels per class on",
            "training": "LogisticRegression on the 8x8 pixels (a linear head on fixed features instead of the "
                        "pipeline's CNN, for time); suspects held out until reviewed",
            "rare_class": f"one class thinned to {RARE_SHARE:.0%} of the pool (class (2*seed+1) mod 10), clean "
                          "annotator, margin with and without class_balance",
            "reviews_per_caught_error": "suspects flagged (each costs one review) / wrong labels among them",
        },
        args.kind: {k: v for k, v in headline.items() if k != "per_seed"},
        other: {k: v for k, v in second.items() if k != "per_seed"},
        "rare": {k: v for k, v in rare.items() if k != "per_seed"},
        "per_seed": {args.kind: headline["per_seed"], other: second["per_seed"], "rare": rare["per_seed"]},
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    log(f"caught {report['caught_share']}, reviews per caught error {report['reviews_per_caught_error']}, "
        f"{report['accuracy_points_below_clean']} points below clean ({args.kind}); rare-class recall "
        f"{rare['without_balance']} -> {rare['with_balance']} with class balance; goals {report['goals']}")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
