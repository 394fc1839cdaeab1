"""Label quality: suspect labels, annotator agreement, and whether more labels still pay.

**Suspects.** After a collect that brought new labels, every label is given out-of-sample
class probabilities by k-fold cross-validation (a kernel SVM, scikit-learn's `SVC`, on each
image's features), and cleanlab's confident learning (`cleanlab.filter.find_label_issues`)
names the labels that are likely wrong. Only labels not judged before are flagged (each
annotation version is judged once, at the first collect with enough labels): judging every
label at every collect gives each correct but unusual label a new chance to be flagged
(3 to 4.5 reviews per caught error instead of 1.4 to 2.1 in a prototype of the benchmark).
The suspects are written into the same data commit as the labels
(`pipelines.labels.Suspect`), held out of training until reviewed
(`LABELLOOP_QUALITY_HOLD_SUSPECTS`), and re-queued for one more annotator
(`loop.queue.QueueKeeper.requeue_disagreements`) with the reason in the task's data.

Why after a collect, not after a training run: a suspect must be held out before the run
that the same labels trigger, and the review is wanted while annotators are at work. It is
cheap: features are cached per image (images never change), the SVM trains on at most
`MAX_CV_LABELS` labels.

Why these features and not the serving model's embeddings: the serving model was trained on
the very labels being judged, and a small CNN learns its wrong labels too (a mislabeled
image's embedding moves towards the wrong class), so its embeddings would not give
out-of-sample probabilities. A pretrained backbone's features (the photo models) and the
pixels (small images, the small CNN family) know nothing of the labels.

**Agreement** (`annotator_agreement`): per annotator, agreement with the others' majority,
Cohen's kappa with each other annotator (`sklearn.metrics.cohen_kappa_score`),
Krippendorff's alpha over all (`krippendorff.alpha`), counts, and the suspects in their labels.

**Stopping signal** (`stopping_signal`): the change of evaluation accuracy over the last
labels, and the stability of the pool's predictions between successive serving models
(Bloodgood & Vijay-Shanker 2009, "A method for stopping active learning based on
stabilizing predictions and the need for user-adjustable stopping": stop once Cohen's
kappa between successive models' predictions on unlabeled data averages at least 0.99 over
the last three changes).
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kernel.layout import LABELS_DIR
from loop.context import LoopContext
from loop.state import RunRecord, StabilityRecord, StateStore, utcnow
from pipelines.labels import (
    LabelEvent,
    Suspect,
    annotation_versions,
    current_annotations,
    labels_by_image,
    read_shard,
    read_suspects,
    shard_paths,
    suspect_states,
    write_suspects,
)
from pipelines.params import Params

__all__ = [
    "LabelIssue", "find_label_issues", "CV_FOLDS", "MAX_CV_LABELS", "REVIEW_FIELD",
    "SuspectCheck", "SuspectView", "AnnotatorAgreement", "Agreement", "annotator_agreement",
    "StoppingSignal", "stopping_signal", "compare_predictions", "record_pool_predictions",
    "LabelQuality", "label_quality_report", "quality_lines", "min_labels_to_judge", "label_features",
]

log = logging.getLogger(__name__)

CV_FOLDS = 5
#: The cross-validation trains on at most this many labels (every candidate, then a seeded
#: sample of the others): an SVM's cost grows with the square of its training set.
MAX_CV_LABELS = 2000
#: The task data key that says why a task came back (a column of Label Studio's Data Manager).
REVIEW_FIELD = "labelloop_review"
#: Bloodgood & Vijay-Shanker's defaults: stop once the last 3 kappas average >= 0.99.
STABLE_KAPPA, STABLE_WINDOW = 0.99, 3


# --- finding suspects (pure: the loop and the benchmark call it) ---------------------------
@dataclass(frozen=True)
class LabelIssue:
    index: int  # into the labels given
    given: str
    predicted: str
    p_given: float  # out-of-sample probability of the given label
    p_predicted: float


def _classifier(seed: int):
    from sklearn.svm import SVC

    # Platt scaling with pairwise coupling (libsvm's probabilities). scikit-learn 1.9
    # deprecates `probability=True` for CalibratedClassifierCV, whose one-vs-rest
    # calibration flagged ~40% more correct labels here (2.0 vs 1.4 reviews per caught
    # error on digits); revisit before scikit-learn 1.11 removes it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return SVC(probability=True, random_state=seed)


def find_label_issues(
    features: np.ndarray, labels: Sequence[str], classes: Sequence[str], *, candidates: np.ndarray | None = None,
    folds: int = CV_FOLDS, seed: int = 0, max_labels: int = MAX_CV_LABELS,
) -> list[LabelIssue]:
    """Labels likely wrong, most likely first, among `candidates` (a mask; default all).

    Out-of-sample probabilities by stratified `folds`-fold cross-validation, then
    cleanlab's confident learning (`prune_by_noise_rate`, ranked by self-confidence).
    Classes with fewer than `folds` labels are left out (too few to judge or to learn)."""
    from cleanlab.filter import find_label_issues as cleanlab_issues
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    x = np.asarray(features, dtype=np.float64).reshape(len(labels), -1)
    given = np.asarray(labels, dtype=object)
    wanted = np.ones(len(given), bool) if candidates is None else np.asarray(candidates, bool).copy()
    counts = Counter(given.tolist())
    judged_classes = [c for c in classes if counts[c] >= folds]
    usable = np.isin(given, judged_classes)
    wanted &= usable
    if len(judged_classes) < 2 or not wanted.any():
        return []
    rows = np.flatnonzero(usable)
    if len(rows) > max_labels:  # every candidate, then a seeded sample of the others
        others = np.setdiff1d(rows, np.flatnonzero(wanted))
        room = max(max_labels - int(wanted.sum()), 0)
        keep = np.random.default_rng(seed).choice(others, size=min(room, len(others)), replace=False)
        rows = np.sort(np.concatenate([np.flatnonzero(wanted), keep]))
    index = {c: i for i, c in enumerate(judged_classes)}
    y = np.array([index[c] for c in given[rows]])
    if np.bincount(y, minlength=len(judged_classes)).min() < folds:  # the sample thinned a class
        return []
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        probs = cross_val_predict(_classifier(seed), x[rows], y, cv=cv, method="predict_proba")
    ranked = cleanlab_issues(y, probs, filter_by="prune_by_noise_rate",
                             return_indices_ranked_by="self_confidence", n_jobs=1)
    issues = []
    for r in ranked:
        row = int(rows[r])
        if not wanted[row]:
            continue
        top = int(np.argmax(probs[r]))
        issues.append(LabelIssue(index=row, given=str(given[row]), predicted=judged_classes[top],
                                 p_given=float(probs[r, y[r]]), p_predicted=float(probs[r, top])))
    return issues


def min_labels_to_judge(min_per_class: int, classes: Sequence[str]) -> int:
    """Suspects are searched once the labels number `min_per_class` per class on average:
    with fewer, out-of-sample probabilities are too weak and correct labels get flagged."""
    return min_per_class * len(classes)


# --- the features judged on ------------------------------------------------------------------
def _feature_space(params: Params) -> str:
    spec = params.data.input_spec
    base = f"{spec.size}x{spec.channels}:{spec.resize}"
    if params.model.kind == "backbone" and params.model.weights != "none":
        return f"backbone:{params.model.backbone}:{params.model.weights}:{base}"
    return f"pixels:{base}"


def label_features(params: Params, paths: dict[str, Path], cache_dir: Path) -> np.ndarray:
    """Each image's features (rows in `paths`' order): a pretrained backbone's pooled
    features when params.yaml names one, else the pixels. Cached per image in
    `cache_dir` (images never change under a name), so a collect decodes only new ones."""
    from pipelines.images import decode_image, preprocess
    from pipelines.models import pretrained_features

    space = _feature_space(params)
    cache = cache_dir / f"features-{hashlib.sha1(space.encode()).hexdigest()[:12]}.npz"
    known: dict[str, np.ndarray] = {}
    if cache.exists():
        with np.load(cache) as held:
            known = dict(zip(held["names"].tolist(), held["features"]))
    missing = [n for n in paths if n not in known]
    if missing:
        pixels = preprocess([decode_image(paths[n]) for n in missing], params.data.input_spec)
        computed = pretrained_features(params, pixels) if space.startswith("backbone") else None
        computed = computed if computed is not None else pixels.reshape(len(missing), -1)
        known.update(zip(missing, np.asarray(computed, dtype=np.float32)))
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, names=np.array(sorted(known), dtype=str),
                 features=np.stack([known[n] for n in sorted(known)]))
        tmp.replace(cache)
    return np.stack([known[n] for n in paths]) if paths else np.zeros((0, 0), np.float32)


# --- the loop's check after a collect -------------------------------------------------------
def _events_since(labels_dir: Path, batch: int | None) -> list[LabelEvent]:
    """Label events of the collected batches numbered above `batch` (all with None)."""
    out = []
    for path in shard_paths(labels_dir):
        number = int(path.stem.split("-")[1]) if path.stem.startswith("batch-") else 0
        if number > (batch or 0) or (batch is None and number == 0):
            out += read_shard(path)
    return out


def _reason(annotator: str, issue: LabelIssue) -> str:
    who = f"annotator {annotator}" if annotator else "an annotator"
    return (f"suspect label: {who} chose {issue.given!r}; a classifier trained on the other labels gives "
            f"{issue.given!r} {issue.p_given:.0%} and {issue.predicted!r} {issue.p_predicted:.0%}. "
            "Please label it again.")


class SuspectCheck:
    """What `Collection.collect` asks before committing a batch: which of the labels not
    judged before are likely wrong. Writes the suspects file the commit then includes."""

    def __init__(self, ctx: LoopContext):
        self.ctx = ctx

    def check(self, before: list[LabelEvent], new: list[LabelEvent], batch: int) -> list[Suspect] | None:
        """The new suspects (written into the workspace's suspects file), or None when the
        labels were not judged (switched off, or too few labels yet): then they are judged
        at a later collect."""
        ctx = self.ctx
        settings = ctx.settings
        if not settings.quality_suspects or not any(e.op == "upsert" for e in new):
            return None
        ws = ctx.workspace
        params = ws.params()
        classes, policy = params.data.classes, params.data.label_policy
        events = before + new
        labels = labels_by_image(events, policy)
        if len(labels) < min_labels_to_judge(settings.quality_min_labels_per_class, classes):
            return None
        labels_dir = ws.root / LABELS_DIR
        flagged = read_suspects(labels_dir)
        states = suspect_states(events, flagged, policy)
        open_images = {image for image, state in states.items() if state == "open"}
        unjudged = {(e.key, e.annotation_updated_at) for e in _events_since(labels_dir, ctx.state.marks().quality_checked_batch) + new}
        by_image: dict[str, list[LabelEvent]] = defaultdict(list)
        for event in current_annotations(events).values():
            by_image[event.image].append(event)
        pool = ws.pool_index()
        names = [n for n in labels if n in pool and n not in open_images]  # open suspects: not evidence
        # Candidates: one annotator's label, from Label Studio, not judged before, never flagged
        # (an image two people labeled has had its review; a flagged one is reviewed once).
        already = {s.image for s in flagged}
        candidate = np.array([
            len(by_image[n]) == 1 and by_image[n][0].task_id is not None and n not in already
            and (by_image[n][0].key, by_image[n][0].annotation_updated_at) in unjudged
            for n in names], dtype=bool)
        if not candidate.any():
            return []
        features = label_features(params, {n: ws.image_path(n) for n in names}, settings.home / "quality")
        issues = find_label_issues(features, [labels[n] for n in names], classes, candidates=candidate)
        found = []
        for issue in issues:
            image = names[issue.index]
            event = by_image[image][0]
            found.append(Suspect(image=image, label=issue.given, annotator=event.annotator, task_id=event.task_id,
                                 annotations=annotation_versions(by_image[image], image),
                                 reason=_reason(event.annotator, issue), hold=settings.quality_hold_suspects,
                                 batch=batch))
        if found:
            write_suspects(labels_dir, flagged + found)
            log.info("batch %d: %d suspect label(s) of %d judged: %s", batch, len(found), int(candidate.sum()),
                     ", ".join(s.image for s in found[:5]))
        return found


# --- agreement -----------------------------------------------------------------------------
@dataclass(frozen=True)
class AnnotatorAgreement:
    annotator: str
    labels: int  # images this annotator labeled (current annotations)
    shared: int  # of those, images someone else labeled too
    with_consensus: float | None  # share of shared images where they chose the others' majority
    kappa: dict[str, float | None]  # Cohen's kappa with each other annotator, on images both labeled
    suspects: int  # suspect labels found among theirs
    suspects_relabeled: int  # of those, changed by a review


@dataclass(frozen=True)
class Agreement:
    annotators: list[AnnotatorAgreement]
    images_multi: int  # images labeled by more than one annotator
    krippendorff_alpha: float | None  # over all annotators and those images (nominal); None: undefined


def _finite(value: float) -> float | None:
    return round(float(value), 4) if np.isfinite(value) else None


def annotator_agreement(events: Iterable[LabelEvent], classes: Sequence[str], suspects: Sequence[Suspect] = (),
                        states: dict[str, str] | None = None) -> Agreement:
    """Agreement of the annotators (Label Studio users; seed and imported labels have none)."""
    import krippendorff
    from sklearn.metrics import cohen_kappa_score

    chosen: dict[str, dict[str, LabelEvent]] = defaultdict(dict)  # image -> annotator -> their latest
    for event in current_annotations(events).values():
        if not event.annotator or event.annotation_id is None:  # seed and imported labels: nobody's annotation
            continue
        held = chosen[event.image].get(event.annotator)
        if held is None or event.annotation_updated_at >= held.annotation_updated_at:
            chosen[event.image][event.annotator] = event
    votes = {image: {a: e.label for a, e in by.items()} for image, by in chosen.items()}
    people = sorted({a for by in votes.values() for a in by})
    multi = [image for image, by in votes.items() if len(by) > 1]
    states = states or {}
    out = []
    for person in people:
        mine = [image for image, by in votes.items() if person in by]
        shared = [image for image in mine if len(votes[image]) > 1]
        agree = judged = 0
        for image in shared:
            (top, n), *rest = Counter(label for a, label in votes[image].items() if a != person).most_common()
            if not rest or rest[0][1] < n:  # the others have a majority
                judged += 1
                agree += votes[image][person] == top
        kappa: dict[str, float | None] = {}
        for other in people:
            both = [image for image in shared if other != person and other in votes[image]]
            if len(both) >= 2:
                with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
                    warnings.simplefilter("ignore")
                    kappa[other] = _finite(cohen_kappa_score([votes[i][person] for i in both],
                                                             [votes[i][other] for i in both], labels=list(classes)))
        theirs = [s for s in suspects if s.annotator == person]
        out.append(AnnotatorAgreement(
            annotator=person, labels=len(mine), shared=len(shared),
            with_consensus=round(agree / judged, 4) if judged else None, kappa=kappa, suspects=len(theirs),
            suspects_relabeled=sum(states.get(s.image) == "relabeled" for s in theirs)))
    alpha = None
    if len(people) > 1 and multi:
        index = {c: i for i, c in enumerate(classes)}
        data = np.full((len(people), len(multi)), np.nan)
        for j, image in enumerate(multi):
            for i, person in enumerate(people):
                if person in votes[image] and votes[image][person] in index:
                    data[i, j] = index[votes[image][person]]
        try:
            alpha = _finite(krippendorff.alpha(reliability_data=data, level_of_measurement="nominal"))
        except (ValueError, ZeroDivisionError):  # one value everywhere: agreement is not measurable
            alpha = None
    return Agreement(annotators=out, images_multi=len(multi), krippendorff_alpha=alpha)


# --- the stopping signal ---------------------------------------------------------------------
def compare_predictions(previous_version: str, previous: dict[str, str], version: str,
                        current: dict[str, str]) -> StabilityRecord | None:
    """How the predicted classes of the images both models scored changed (None: none in common)."""
    from sklearn.metrics import cohen_kappa_score

    common = sorted(previous.keys() & current.keys())
    if not common:
        return None
    a, b = [previous[i] for i in common], [current[i] for i in common]
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore")
        kappa = 1.0 if a == b else _finite(cohen_kappa_score(a, b))
    return StabilityRecord(at=utcnow(), version=version, previous=previous_version, images=len(common),
                           changed=sum(x != y for x, y in zip(a, b)), kappa=kappa)


def record_pool_predictions(state: StateStore, version: str, predictions: dict[str, str]) -> StabilityRecord | None:
    """After a re-score: keep this model's predictions on the pool, and how they differ from
    the previous model's on the images both scored (a new version only)."""
    held_version, held = state.pool_predictions()
    record = (compare_predictions(held_version, held, version, predictions)
              if held_version and held_version != version else None)
    state.replace_pool_predictions(version, predictions, record)
    return record


@dataclass(frozen=True)
class StoppingSignal:
    labels_added: int | None  # training labels between the two runs compared
    accuracy_change_points: float | None  # their accuracy difference, in points
    judged_by: str | None
    runs: list[str] = field(default_factory=list)  # the two runs compared (older, newer)
    pool_changed_share: float | None = None  # share of pool images whose prediction changed
    pool_kappa: float | None = None
    models: list[str] = field(default_factory=list)  # the two serving models compared (older, newer)
    kappa_window_mean: float | None = None  # mean kappa of the last STABLE_WINDOW model changes
    stable: bool = False  # Bloodgood & Vijay-Shanker's criterion met: more labels are unlikely to pay
    words: str = ""


def stopping_signal(runs: Sequence[RunRecord], stability: Sequence[StabilityRecord]) -> StoppingSignal:
    """Whether more labels still pay, from the runs (newest first) and the pool's prediction
    changes (newest first), said in words."""
    said = []
    judged = [r for r in runs if r.accuracy is not None and r.n_labels and r.judged_by and r.status != "running"]
    labels_added = change = judged_by = None
    compared: list[str] = []
    if judged:
        newest = judged[0]
        older = next((r for r in judged[1:] if r.judged_by == newest.judged_by and r.n_labels < newest.n_labels), None)
        if newest.judged_by == "cv":
            said.append("accuracy change not known yet: runs are judged by cross-validation, whose scores on "
                        "different label sets do not compare")
        elif older is not None:
            labels_added, judged_by = newest.n_labels - older.n_labels, newest.judged_by
            change = round((newest.accuracy - older.accuracy) * 100, 2)
            compared = [older.run_id, newest.run_id]
            said.append(f"the last {labels_added} labels moved {judged_by} accuracy by {change:+.1f} points "
                        f"({older.accuracy:.3f} -> {newest.accuracy:.3f})")
    share = kappa = window = None
    models: list[str] = []
    stable = False
    if stability:
        last = stability[0]
        share = round(last.changed / last.images, 4) if last.images else None
        kappa, models = last.kappa, [last.previous, last.version]
        said.append(f"predictions on the pool changed for {share:.1%} of {last.images} images between "
                    f"{last.previous.split(':')[-1]} and {last.version.split(':')[-1]}"
                    + (f" (Cohen's kappa {kappa:.3f})" if kappa is not None else ""))
        kappas = [s.kappa for s in stability[:STABLE_WINDOW] if s.kappa is not None]
        if len(kappas) == STABLE_WINDOW:
            window = round(float(np.mean(kappas)), 4)
            stable = window >= STABLE_KAPPA
    if stable:
        verdict = (f"predictions have stabilised (mean kappa {window:.3f} >= {STABLE_KAPPA} over the last "
                   f"{STABLE_WINDOW} models, Bloodgood & Vijay-Shanker 2009): more labels are unlikely to pay")
    elif stability:
        verdict = "more labels still change the model's predictions"
    else:
        verdict = "not known until two models have scored the pool"
    return StoppingSignal(labels_added=labels_added, accuracy_change_points=change, judged_by=judged_by,
                          runs=compared, pool_changed_share=share, pool_kappa=kappa, models=models,
                          kappa_window_mean=window, stable=stable, words="; ".join(said + [verdict]))


# --- what `labelloop status` shows -----------------------------------------------------------
@dataclass(frozen=True)
class SuspectView:
    image: str
    label: str
    annotator: str
    task_id: int | None
    state: str  # open | confirmed | relabeled | unresolved
    held: bool  # held out of training now
    reason: str
    batch: int


@dataclass(frozen=True)
class LabelQuality:
    suspects_enabled: bool  # LABELLOOP_QUALITY_SUSPECTS
    hold_suspects: bool  # LABELLOOP_QUALITY_HOLD_SUSPECTS
    min_labels: int  # labels needed before suspects are searched
    checked_through_batch: int | None  # label batches judged so far
    suspects: list[SuspectView]  # open first, then the newest
    counts: dict[str, int]  # suspects by state
    held_out: int  # held out of training now
    agreement: Agreement
    class_balance: bool  # LABELLOOP_QUERY_CLASS_BALANCE
    stopping: StoppingSignal


def label_quality_report(ctx: LoopContext, events: list[LabelEvent], params: Params) -> LabelQuality:
    ws, settings = ctx.workspace, ctx.settings
    suspects = read_suspects(ws.root / LABELS_DIR)
    states = suspect_states(events, suspects, params.data.label_policy)
    views = [SuspectView(image=s.image, label=s.label, annotator=s.annotator, task_id=s.task_id,
                         state=states.get(s.image, "open"), held=s.hold and states.get(s.image) == "open",
                         reason=s.reason, batch=s.batch) for s in suspects]
    views.sort(key=lambda v: (v.state != "open", -v.batch, v.image))
    return LabelQuality(
        suspects_enabled=settings.quality_suspects, hold_suspects=settings.quality_hold_suspects,
        min_labels=min_labels_to_judge(settings.quality_min_labels_per_class, params.data.classes),
        checked_through_batch=ctx.state.marks().quality_checked_batch,
        suspects=views, counts=dict(Counter(v.state for v in views)), held_out=sum(v.held for v in views),
        agreement=annotator_agreement(events, params.data.classes, suspects, states),
        class_balance=settings.query_class_balance,
        stopping=stopping_signal(ctx.state.runs(50), ctx.state.stability(STABLE_WINDOW)),
    )


def quality_lines(quality: dict | None) -> list[str]:
    """`labelloop status`'s lines (rich markup) for label quality (`LabelQuality` as a dict,
    as `LoopStatus.label_quality` holds it)."""
    if not quality:
        return []
    lines = []
    suspects, counts = quality["suspects"], quality["counts"]
    if not quality["suspects_enabled"]:
        lines.append("suspects       not searched (LABELLOOP_QUALITY_SUSPECTS=false)")
    elif quality["checked_through_batch"] is None and not suspects:
        lines.append(f"suspects       searched once there are {quality['min_labels']} labels")
    else:
        done = ", ".join(f"{counts[k]} {k}" for k in ("confirmed", "relabeled", "unresolved") if counts.get(k))
        opened = [s for s in suspects if s["state"] == "open"]
        held = ("held out of training until reviewed" if quality["hold_suspects"]
                else "still trained on (LABELLOOP_QUALITY_HOLD_SUSPECTS=false)")
        head = (f"[yellow]suspects       {len(opened)} open ({held}; back in the queue for one more annotator)"
                if opened else "suspects       none open")
        checked = quality["checked_through_batch"]
        lines.append(head + (f"; reviewed: {done}" if done else "")
                     + (f"; labels checked through batch {checked}" if checked is not None else "")
                     + ("[/]" if opened else ""))
        lines += [f"               {s['image']} (task {s['task_id']}): {s['reason']}" for s in opened[:5]]
    agreement = quality["agreement"]
    people = agreement["annotators"]
    if people:
        alpha = agreement["krippendorff_alpha"]
        lines.append(f"agreement      {len(people)} annotators, {agreement['images_multi']} images labeled by more "
                     "than one" + (f"; Krippendorff's alpha {alpha:.3f}" if alpha is not None else ""))
        for a in people[:10]:
            kappas = ", ".join(f"{k} {v:.2f}" for k, v in a["kappa"].items() if v is not None)
            consensus = f"{a['with_consensus']:.0%} with the others' majority" if a["with_consensus"] is not None \
                else "no shared images with a majority"
            lines.append(f"               annotator {a['annotator']}: {a['labels']} labels, {consensus}"
                         + (f", Cohen's kappa {kappas}" if kappas else "")
                         + f", suspects {a['suspects']} ({a['suspects_relabeled']} relabeled by a review)")
    if quality["class_balance"]:
        lines.append("query          class balance on: each batch takes the predicted classes in turn")
    lines.append(f"more labels?   {quality['stopping']['words']}")
    return lines
