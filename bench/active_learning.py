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

    python -m bench.active_learning --from-scratch [--seeds 5] [--epochs 20] [--jobs 2]

`--from-scratch` simulates what the product does from zero labels, with the default query
strategy (margin): a workspace made from the unlabeled digits pool (`init --images`), whose
evaluation sample is drawn as the product draws it (`pipelines.pool.in_eval_sample` per
image, at most `eval.max_images`); no seed labels; the cold-start diversity queue
(`cold_start_order` on the pixels, computed once, as at provisioning) until every class
has `train.min_per_class` training labels; one evaluation task in every `eval.every` tasks
(`loop.queue.interleave_scores`) until the evaluation set is ready (`eval_set_ready`), then
evaluation tasks go last; after the first model, margin on the pool each round of `--step`
tasks. Labels count training AND evaluation labels (what annotators spend). Accuracy is
on the hidden held-out test split, as for the other rows. Seed s sets the training seed,
`eval.seed` and the cold-start seed, so each seed is a different workspace. The row is
merged into the existing JSON (summary and curves under `FROM_SCRATCH_KEY`, details under
"from_scratch"); the other rows are kept, and a plain run keeps this one. Like the other
rows it has no promotion gate, and it retrains every `--step` labels (the loop's
`query_batch_size`; its `retrain_min_new_labels` is 20). 5 seeds at `--epochs 20 --jobs 2`
took 29 min here (2 cores, shared).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import random
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
    train_sha256: tuple[str, ...] = ()  # of each train-split PNG: what the evaluation sample draws on


def load_digits_split(seed_split: int = 0) -> DigitsSplit:
    """The digits workspace's split (same function, same seed as `labelloop init`)."""
    from loop.starter import digits_images

    try:
        from loop.creation import _split
    except ImportError:  # before workspace creation moved to loop.creation
        from loop.workspace import _split
    from pipelines.images import decode_image

    images = digits_images()
    classes = sorted({i.label for i in images}, key=int)
    test, seed, pool = _split(images, classes, 2, 0.25, seed_split)
    train = sorted(seed + pool, key=lambda i: i.name)
    decode = lambda items: [decode_image(i.png) for i in items]  # noqa: E731
    labels = lambda items: np.array([classes.index(i.label) for i in items])  # noqa: E731
    return DigitsSplit(classes, [i.name for i in train], decode(train), labels(train), decode(test), labels(test),
                       tuple(i.sha256 for i in train))


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


# --- from scratch: what the product does from zero labels ----------------------------------
FROM_SCRATCH_KEY = "margin (from scratch, counting evaluation labels)"


def default_strategy() -> str:
    """The loop's default query strategy (`LABELLOOP_QUERY_STRATEGY` unset)."""
    from kernel.settings import Settings

    return Settings.model_fields["query_strategy"].default


def eval_sample(data: DigitsSplit, evaluation) -> list[int]:
    """The train-split indices the product reserves for evaluation when the pool is imported
    unlabeled: `in_eval_sample` per image, in import (name) order, at most `max_images`."""
    from pipelines.pool import in_eval_sample

    drawn = [i for i in range(len(data.train_images))
             if in_eval_sample(data.train_sha256[i], evaluation.fraction, evaluation.seed)]
    return drawn[: evaluation.max_images]


def queue_head(pool: list[int], evaluation: list[int], *, ready: bool, every: int, n: int) -> list[int]:
    """The first `n` tasks Label Studio serves: `pool` in the queue's pool order, the
    evaluation tasks (already in their shuffled order) placed by the loop's own
    `interleave_scores` (one in every `every` until the set is ready, then after the pool),
    lowest score first."""
    from loop.queue import interleave_scores
    from pipelines.strategies import order_to_scores

    pool_scores = [float(v) for v in order_to_scores(np.arange(len(pool)))]
    eval_scores = interleave_scores(pool_scores, len(evaluation), every=None if ready else every)
    merged = sorted([(sc, 0, k, i) for k, (i, sc) in enumerate(zip(pool, pool_scores, strict=True))]
                    + [(sc, 1, k, i) for k, (i, sc) in enumerate(zip(evaluation, eval_scores, strict=True))])
    return [i for *_, i in merged[:n]]


def _shuffled_eval(unlabeled_eval: list[int], seed: int) -> list[int]:
    """`QueueKeeper._eval_positions`' order: by task id (import order), seeded shuffle."""
    out = sorted(unlabeled_eval)
    random.Random(seed).shuffle(out)
    return out


def run_from_scratch(seed: int, data: DigitsSplit, cfg: dict) -> dict:
    """One simulated workspace from zero labels (see the module docstring). Returns the curve
    [(labels incl. evaluation labels, held-out accuracy or None before the first model)] and,
    per round, the training and evaluation labels spent."""
    from pipelines.images import preprocess
    from pipelines.params import DataParams, EvalParams, Params
    from pipelines.prepare import eval_set_ready
    from pipelines.strategies import cold_start_order

    train = TrainParams(epochs=cfg["epochs"], min_steps=cfg["min_steps"], seed=seed)
    params = Params(data=DataParams(classes=data.classes, image_size=8), train=train,
                    eval=EvalParams(seed=seed))
    ev = params.evaluation
    evaluation = eval_sample(data, ev)
    eval_set = set(evaluation)
    pool = [i for i in range(len(data.train_images)) if i not in eval_set]  # import order
    label_of = lambda i: data.classes[int(data.train_y[i])]  # noqa: E731  (the simulated annotator)
    # Provisioning: the cold-start queue, computed once (no model, so nothing re-scores it).
    pixels = preprocess([data.train_images[i] for i in pool], 8).reshape(len(pool), -1)
    cold = [pool[int(k)] for k in cold_start_order(pixels, seed=seed, head=cfg["cold_start_diverse"])]
    cold_queue = queue_head(cold, _shuffled_eval(evaluation, ev.seed), ready=False, every=ev.every,
                            n=len(pool) + len(evaluation))
    train_labeled: list[int] = []
    eval_labeled: list[int] = []
    model = None
    curve, rounds = [], []
    first_model_at = eval_ready_at = None
    round_no = 0
    while len(train_labeled) + len(eval_labeled) < cfg["max_labels"]:
        done = set(train_labeled) | set(eval_labeled)
        unlabeled_eval = [i for i in evaluation if i not in done]
        ready = eval_set_ready(params, {data.train_names[i]: label_of(i) for i in eval_labeled})
        if model is None:  # the static cold-start queue, labeled tasks gone
            batch = [i for i in cold_queue if i not in done][: cfg["step"]]
        else:  # re-scored after the last model: margin on the pool, evaluation tasks placed
            pool_left = np.array([i for i in pool if i not in done])
            head = queue_head(list(range(len(pool_left))), [-1 - k for k in range(len(unlabeled_eval))],
                              ready=ready, every=ev.every, n=cfg["step"])
            n_pool = sum(k >= 0 for k in head)
            picks = acquire(cfg["strategy"], model, data.train_images, pool_left, train_labeled, n_pool,
                            seed, round_no) if n_pool else []
            shuffled = iter(_shuffled_eval(unlabeled_eval, ev.seed))
            it_pool = iter(picks)
            batch = [next(it_pool) if k >= 0 else next(shuffled) for k in head]
            round_no += 1
        if not batch:
            break  # everything labeled
        for i in batch:
            (eval_labeled if i in eval_set else train_labeled).append(i)
        total = len(train_labeled) + len(eval_labeled)
        if eval_ready_at is None and eval_set_ready(params, {data.train_names[i]: label_of(i) for i in eval_labeled}):
            eval_ready_at = total
        counts = np.bincount(data.train_y[train_labeled], minlength=len(data.classes)) if train_labeled else None
        accuracy = None
        if model is not None or (counts is not None and counts.min() >= train.min_per_class):
            first_model_at = first_model_at or total
            model, accuracy = train_and_evaluate(data, train_labeled, train, f"scratch-{seed}")
            accuracy = round(accuracy, 4)
        curve.append((total, accuracy))
        rounds.append({"labels": total, "train_labels": len(train_labeled), "eval_labels": len(eval_labeled)})
    return {"curve": curve, "rounds": rounds, "first_model_at": first_model_at, "eval_ready_at": eval_ready_at,
            "eval_sample": len(evaluation), "pool": len(pool)}


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


def _worker_from_scratch(strategy: str, seed: int, cfg: dict) -> tuple[str, int, dict, float]:
    started = time.perf_counter()
    run = run_from_scratch(seed, _DATA, cfg)
    return strategy, seed, run, time.perf_counter() - started


def labels_to_reach(curves: list[list[tuple[int, float | None]]], target: float) -> float | None:
    """Mean over seeds of the first label count reaching `target`; None if a seed never does.
    A point without a model (None: from scratch, before the first model) reaches nothing."""
    firsts = []
    for curve in curves:
        hit = next((n for n, acc in curve if acc is not None and acc >= target), None)
        if hit is None:
            return None
        firsts.append(hit)
    return float(np.mean(firsts))


def summarize(curves: list[list], random_curves: list[list] | None, max_labels: int) -> dict:
    """Final accuracy, labels to each target and the ratio to random's."""
    final = [c[-1][1] for c in curves]
    entry = {"final_accuracy_mean": round(float(np.mean(final)), 4),
             "final_accuracy_std": round(float(np.std(final)), 4)}
    for t in TARGETS:
        needs = labels_to_reach(curves, t)
        base = labels_to_reach(random_curves, t) if random_curves else None
        entry[f"labels_to_{int(t * 100)}"] = needs
        entry[f"ratio_to_random_{int(t * 100)}"] = round(needs / base, 3) if needs and base else None
        if needs and base is None and random_curves:
            # Random did not get there within the budget: the ratio is at most this.
            entry[f"ratio_to_random_budget_{int(t * 100)}"] = round(needs / max_labels, 3)
    return entry


def plot(results: dict, out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, curves in results.items():
        # Only the label counts where every seed has a model (from scratch: after the first).
        xs = [n for n, _ in curves[0] if all(dict(c).get(n) is not None for c in curves)]
        accs = np.array([[dict(c)[n] for n in xs] for c in curves])
        mean, std = accs.mean(axis=0), accs.std(axis=0)
        style = {"linestyle": "--", "color": "black"} if name == FROM_SCRATCH_KEY else {}
        ax.plot(xs, mean, label=name, **style)
        ax.fill_between(xs, mean - std, mean + std, alpha=0.15, color=style.get("color"))
    for target in TARGETS:
        ax.axhline(target, color="grey", linewidth=0.6, linestyle="--")
    ax.set_xlabel("labels (from scratch: training + evaluation labels)")
    ax.set_ylabel("held-out accuracy")
    ax.set_title(title, fontsize=10)
    ax.set_ylim(0.5, 1.0)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def _plot_title(config: dict) -> str:
    return (f"digits: active learning, {config['seeds']} seeds, +{config['step']} per round, "
            f"{config['epochs']} epochs (at least {config['min_steps']} steps)")


def _curve_key(cfg: dict, strategy: str, seed: int) -> str:
    keep = ("start", "step", "max_labels", "epochs", "min_steps", "mode", "cold_start_diverse")
    return json.dumps({**{k: cfg[k] for k in keep if k in cfg}, "strategy": strategy, "seed": seed},
                      sort_keys=True)


def _run_all(todo: list[tuple[str, int]], cfg: dict, jobs: int, partial: Path, worker, on_done) -> None:
    """Run `worker(name, seed, cfg)` for each of `todo` in `jobs` processes, appending each
    result to `partial` as it finishes (so an interrupted run resumes)."""
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=mp.get_context("spawn"),
                             initializer=_worker_init) as pool:
        futures = [pool.submit(worker, name, seed, cfg) for name, seed in todo]
        for n, future in enumerate(as_completed(futures), start=1):
            name, seed, result, seconds = future.result()
            on_done(name, seed, result)
            with partial.open("a") as fh:
                fh.write(json.dumps({"key": _curve_key(cfg, name, seed), "result": result}) + "\n")
            curve = result["curve"] if isinstance(result, dict) else result
            elapsed = time.perf_counter() - started
            eta = elapsed / n * (len(todo) - n)
            print(f"[{n}/{len(todo)}] {name:>16} seed {seed}: "
                  + " ".join(f"{k}:{a:.3f}" for k, a in curve[::5] if a is not None)
                  + f"  ({seconds:.0f}s; ~{eta / 60:.0f} min left)", flush=True)


def _read_partial(partial: Path) -> dict[str, object]:
    done: dict[str, object] = {}
    if partial.exists():
        for line in partial.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                done[row["key"]] = row.get("result", row.get("curve"))
    return done


def _resume(partial: Path, cfg: dict, names: list[str], seeds: int) -> tuple[dict[tuple[str, int], object], list]:
    """Results already in `partial` by (strategy, seed), and the (strategy, seed) pairs to
    run, seed by seed (so an early look at partial results compares strategies)."""
    done = _read_partial(partial)
    found, todo = {}, []
    for seed in range(seeds):
        for name in names:
            key = _curve_key(cfg, name, seed)
            if key in done:
                found[(name, seed)] = done[key]
            else:
                todo.append((name, seed))
    return found, todo


def _show(v: float | None, max_labels: int) -> str:
    return f"{v:.0f}" if v is not None else f">{max_labels}"


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
    parser.add_argument("--from-scratch", action="store_true",
                        help="only the from-scratch row (default strategy, evaluation labels counted), "
                             "merged into the existing --out")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "active_learning.json")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.from_scratch:
        main_from_scratch(args)
        return
    cfg = {"start": args.start, "step": args.step, "max_labels": args.max_labels, "epochs": args.epochs,
           "min_steps": args.min_steps}
    strategies = [s for s in args.strategies.split(",") if s]
    unknown = sorted(set(strategies) - set(STRATEGY_NAMES))
    if unknown:
        parser.error(f"unknown strategies {unknown}; choose from {', '.join(STRATEGY_NAMES)}")
    # Finished curves are appended here as they come, so an interrupted run resumes.
    partial = args.out.with_suffix(".partial.jsonl")
    results: dict[str, list] = {name: [None] * args.seeds for name in strategies}
    found, todo = _resume(partial, cfg, strategies, args.seeds)
    for (name, seed), curve in found.items():
        results[name][seed] = [tuple(p) for p in curve]
    print(f"{len(todo)} learning curves to run ({len(strategies) * args.seeds - len(todo)} resumed "
          f"from {partial.name}), {args.jobs} worker(s)", flush=True)
    started = time.perf_counter()

    def on_done(name: str, seed: int, curve: list) -> None:
        results[name][seed] = [tuple(p) for p in curve]

    _run_all(todo, cfg, args.jobs, partial, _worker_curve, on_done)
    summary = {name: summarize(curves, results.get("random"), args.max_labels) for name, curves in results.items()}
    reached = {n: e["labels_to_95"] for n, e in summary.items() if e["labels_to_95"] is not None}
    winner = min(reached, key=reached.get) if reached else None
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    report = {
        "config": config,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "seconds_this_run": round(time.perf_counter() - started, 1),
        "fewest_labels_to_95": winner,
        "summary": summary, "curves": results,
    }
    # A from-scratch row from an earlier `--from-scratch` run with the same configuration
    # stays (its ratios re-computed against this run's random row).
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    scratch_cfg = (previous.get("from_scratch") or {}).get("config", {})
    same = all(scratch_cfg.get(k) == cfg[k] for k in ("step", "max_labels", "epochs", "min_steps"))
    if FROM_SCRATCH_KEY in previous.get("curves", {}) and not same:
        print(f"dropping the from-scratch row of {args.out.name}: another configuration; "
              f"run with --from-scratch to add it back")
    elif FROM_SCRATCH_KEY in previous.get("curves", {}):
        scratch = previous["curves"][FROM_SCRATCH_KEY]
        report["summary"][FROM_SCRATCH_KEY] = {
            **previous["summary"][FROM_SCRATCH_KEY],
            **summarize(scratch, results.get("random"), args.max_labels)}
        report["curves"][FROM_SCRATCH_KEY] = scratch
        report["from_scratch"] = previous.get("from_scratch")
    png = args.out.with_suffix(".png")
    plot(report["curves"], png, _plot_title(config))
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    width = max(16, *(len(n) for n in report["summary"]))
    print(f"\n{'strategy':>{width}}  labels→90%  labels→95%  ×random(95%)  accuracy@{args.max_labels}")
    for name, e in report["summary"].items():
        ratio = e["ratio_to_random_95"] or e.get("ratio_to_random_budget_95")
        print(f"{name:>{width}}  {_show(e['labels_to_90'], args.max_labels):>10}  "
              f"{_show(e['labels_to_95'], args.max_labels):>10}  "
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


def main_from_scratch(args) -> None:
    """The from-scratch row, merged into the JSON the strategy rows are in."""
    from kernel.settings import Settings
    from pipelines.params import EvalParams

    strategy = default_strategy()
    cfg = {"mode": "from_scratch", "strategy": strategy, "step": args.step, "max_labels": args.max_labels,
           "epochs": args.epochs, "min_steps": args.min_steps,
           "cold_start_diverse": Settings.model_fields["cold_start_diverse"].default}
    partial = args.out.with_name(args.out.stem + ".from_scratch.partial.jsonl")
    runs: list[dict | None] = [None] * args.seeds
    found, todo = _resume(partial, cfg, [strategy], args.seeds)
    for (_, seed), run in found.items():
        runs[seed] = run
    print(f"{len(todo)} from-scratch runs to go ({args.seeds - len(todo)} resumed from {partial.name}), "
          f"{args.jobs} worker(s)", flush=True)
    started = time.perf_counter()

    def on_done(name: str, seed: int, run: dict) -> None:
        runs[seed] = run

    _run_all(todo, cfg, args.jobs, partial, _worker_from_scratch, on_done)
    seconds = round(time.perf_counter() - started, 1)
    curves = [[tuple(p) for p in r["curve"]] for r in runs]
    report = json.loads(args.out.read_text()) if args.out.exists() else {"summary": {}, "curves": {}}
    strategy_config = report.get("config", {})
    comparable = all(strategy_config.get(k) == v for k, v in
                     (("step", args.step), ("max_labels", args.max_labels), ("epochs", args.epochs),
                      ("min_steps", args.min_steps)))
    random_curves = report["curves"].get("random") if comparable else None
    entry = summarize(curves, random_curves, args.max_labels)

    def spent(target: float) -> dict | None:
        """Training and evaluation labels (mean over seeds) when each seed first reached target."""
        hits = []
        for run in runs:
            row = next((r for r, (_, acc) in zip(run["rounds"], run["curve"], strict=True)
                        if acc is not None and acc >= target), None)
            if row is None:
                return None
            hits.append(row)
        return {k: float(np.mean([h[k] for h in hits])) for k in ("labels", "train_labels", "eval_labels")}

    mean_of = lambda key: (float(np.mean([r[key] for r in runs]))  # noqa: E731
                           if all(r[key] is not None for r in runs) else None)
    entry.update({
        "strategy": strategy,
        "spent_at_90": spent(0.90), "spent_at_95": spent(0.95),
        "eval_labels_at_end_mean": float(np.mean([r["rounds"][-1]["eval_labels"] for r in runs])),
        "first_model_at_labels_mean": mean_of("first_model_at"),
        "eval_set_ready_at_labels_mean": mean_of("eval_ready_at"),
    })
    if random_curves is None:
        entry["note"] = "no random row with the same step/max_labels/epochs/min_steps in this JSON: no ratio"
    report["summary"][FROM_SCRATCH_KEY] = entry
    report["curves"][FROM_SCRATCH_KEY] = curves
    report["from_scratch"] = {
        "config": {**cfg, "seeds": args.seeds, "jobs": args.jobs, "eval": EvalParams().model_dump(),
                   "seed_sets": "train.seed = eval.seed = cold-start seed = seed",
                   "promotion_gate": "none (every retrained model scores the pool), as for the strategy rows"},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "seconds_this_run": seconds,
        "per_seed": [{k: r[k] for k in ("first_model_at", "eval_ready_at", "eval_sample", "pool")}
                     | {"eval_labels_at_end": r["rounds"][-1]["eval_labels"]} for r in runs],
        "rounds": [r["rounds"] for r in runs],
    }
    png = args.out.with_suffix(".png")
    plot(report["curves"], png, _plot_title(strategy_config or {**cfg, "seeds": args.seeds}))
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\n{'row':>50}  labels→90%  labels→95%  ×random(95%)  accuracy@{args.max_labels}")
    for name in [n for n in ("random", strategy) if n in report["summary"]] + [FROM_SCRATCH_KEY]:
        e = report["summary"][name]
        ratio = e.get("ratio_to_random_95") or e.get("ratio_to_random_budget_95")
        print(f"{name:>50}  {_show(e['labels_to_90'], args.max_labels):>10}  "
              f"{_show(e['labels_to_95'], args.max_labels):>10}  "
              f"{(f'{ratio:.2f}' if ratio is not None else '-'):>12}  "
              f"{e['final_accuracy_mean']:.3f} ± {e['final_accuracy_std']:.3f}")
    for t in ("90", "95"):
        if entry[f"spent_at_{t}"]:
            s = entry[f"spent_at_{t}"]
            print(f"from scratch at {t}%: {s['labels']:.0f} labels = {s['train_labels']:.0f} training + "
                  f"{s['eval_labels']:.0f} evaluation (mean of {args.seeds} seeds)")
    print(f"first model at {entry['first_model_at_labels_mean']} labels, evaluation set ready at "
          f"{entry['eval_set_ready_at_labels_mean']} labels (means); {seconds:.0f}s")
    partial.unlink(missing_ok=True)
    print(f"wrote {args.out} and {png}")


if __name__ == "__main__":
    main()
