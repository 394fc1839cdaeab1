import numpy as np
import pytest

from kernel.errors import BadInputError, ConfigError
from pipelines.strategies import (
    STRATEGIES,
    STRATEGY_NAMES,
    BatchQueryStrategy,
    DiverseMargin,
    Entropy,
    LeastConfidence,
    Margin,
    RandomSampling,
    entropy_scores,
    get_strategy,
    least_confidence_scores,
    margin_scores,
)


class StrategyContract:
    """Every query strategy honours these; a new strategy inherits this class."""

    strategy = None

    def test_one_score_per_item(self):
        probs = np.array([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]])
        assert self.strategy.score(probs).shape == (3,)

    def test_rejects_nan(self):
        with pytest.raises(BadInputError, match="NaN"):
            self.strategy.score(np.array([[np.nan, 1.0]]))

    def test_rejects_wrong_shape(self):
        with pytest.raises(BadInputError, match="n_items, n_classes"):
            self.strategy.score(np.array([0.2, 0.8]))


class UncertaintyContract(StrategyContract):
    """What every uncertainty-based strategy adds to the contract."""

    def test_most_uncertain_item_scores_lowest(self):
        probs = np.array([[0.98, 0.01, 0.01], [0.34, 0.33, 0.33], [0.7, 0.2, 0.1]])
        assert int(np.argmin(self.strategy.score(probs))) == 1


class TestMargin(UncertaintyContract):
    strategy = Margin()

    def test_known_values(self):
        probs = np.array([[0.6, 0.3, 0.1], [0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
        np.testing.assert_allclose(margin_scores(probs), [0.3, 0.0, 1.0])

    def test_one_class_has_nothing_to_learn(self):
        np.testing.assert_allclose(margin_scores(np.array([[1.0], [1.0]])), [1.0, 1.0])

    def test_ties_keep_equal_scores(self):
        scores = margin_scores(np.array([[0.4, 0.4, 0.2], [0.2, 0.4, 0.4]]))
        assert scores[0] == scores[1] == 0.0


class TestLeastConfidence(UncertaintyContract):
    strategy = LeastConfidence()

    def test_known_values(self):
        np.testing.assert_allclose(
            least_confidence_scores(np.array([[0.6, 0.3, 0.1], [0.5, 0.5, 0.0]])), [0.6, 0.5])


class TestEntropy(UncertaintyContract):
    strategy = Entropy()

    def test_uniform_is_zero_and_certain_is_one(self):
        np.testing.assert_allclose(
            entropy_scores(np.array([[0.25] * 4, [1.0, 0, 0, 0]])), [0.0, 1.0], atol=1e-12)

    def test_orders_by_entropy_not_by_margin(self):
        # same margin (0.1), the flatter tail has higher entropy -> scores lower
        probs = np.array([[0.45, 0.35, 0.1, 0.1], [0.45, 0.35, 0.2, 0.0]])
        assert entropy_scores(probs)[0] < entropy_scores(probs)[1]


class TestRandomSampling(StrategyContract):
    strategy = RandomSampling(seed=3)

    def test_seeded_and_in_unit_interval(self):
        probs = np.full((50, 3), 1 / 3)
        a, b = RandomSampling(seed=1).score(probs), RandomSampling(seed=1).score(probs)
        np.testing.assert_array_equal(a, b)
        assert 0 <= a.min() and a.max() < 1 and len(set(a)) == 50


class BatchStrategyContract(UncertaintyContract):
    """Every batch-mode strategy: a pointwise score for one item, and an ordering of the whole
    pool that is a permutation, deterministic, and never picks two exact duplicates into one
    batch while other items remain."""

    def _pool(self):
        rng = np.random.default_rng(0)
        probs = rng.dirichlet(np.ones(3), 40)
        embeddings = rng.normal(size=(40, 4))
        embeddings[1] = embeddings[0]  # an exact duplicate
        probs[1] = probs[0] = [0.34, 0.33, 0.33]  # ...that is also the most uncertain
        return probs, embeddings

    def test_is_a_batch_strategy(self):
        assert isinstance(self.strategy, BatchQueryStrategy)

    def test_order_is_a_deterministic_permutation(self):
        probs, embeddings = self._pool()
        first = self.strategy.order(probs, embeddings, labeled_embeddings=None, batch_size=5)
        again = self.strategy.order(probs, embeddings, labeled_embeddings=None, batch_size=5)
        assert sorted(first.tolist()) == list(range(40)) and first.tolist() == again.tolist()

    def test_a_batch_holds_no_duplicates(self):
        probs, embeddings = self._pool()
        batch = self.strategy.order(probs, embeddings, labeled_embeddings=None, batch_size=5)[:5].tolist()
        assert not {0, 1} <= set(batch)

    def test_rejects_mismatched_embeddings(self):
        probs, embeddings = self._pool()
        with pytest.raises(BadInputError):
            self.strategy.order(probs, embeddings[:10], labeled_embeddings=None, batch_size=5)


class TestDiverseMargin(BatchStrategyContract):
    strategy = DiverseMargin()


def test_every_registered_strategy_has_a_contract_test():
    tested = {cls.strategy.name for cls in (TestMargin, TestLeastConfidence, TestEntropy,
                                            TestRandomSampling, TestDiverseMargin)}
    assert tested == set(STRATEGY_NAMES) == set(STRATEGIES)
    assert all(get_strategy(n).name == n for n in STRATEGY_NAMES)


def test_unknown_strategy_is_a_config_error_that_lists_the_choices():
    with pytest.raises(ConfigError, match="unknown query strategy 'nope'.*margin"):
        get_strategy("nope")


# --- batch mode and cold start ---------------------------------------------------------------
from pipelines.strategies import cold_start_order, diverse_margin_order, k_center_greedy, order_to_scores  # noqa: E402


def _clusters(n_per=20, centers=((0, 0), (10, 0), (0, 10), (10, 10)), seed=0):
    rng = np.random.default_rng(seed)
    points = np.concatenate([np.asarray(c) + rng.normal(0, 0.3, (n_per, 2)) for c in centers])
    return points, np.repeat(np.arange(len(centers)), n_per)


def test_k_center_picks_no_duplicate_and_spreads_across_clusters():
    points, cluster = _clusters()
    picks = k_center_greedy(points, 4, seed=3)
    assert len(set(picks)) == 4
    assert sorted(cluster[picks]) == [0, 1, 2, 3]  # one from each cluster


def test_k_center_stays_away_from_what_is_labeled():
    points, cluster = _clusters()
    labeled = np.concatenate([points[cluster == 0][:3], points[cluster == 1][:3], points[cluster == 2][:3]])
    assert cluster[k_center_greedy(points, 1, anchors=labeled)[0]] == 3


def test_exact_duplicates_are_never_both_picked_while_others_remain():
    points = np.array([[0.0, 0.0], [0.0, 0.0], [5.0, 5.0], [9.0, 0.0]])
    picks = k_center_greedy(points, 3, seed=0)
    assert len(set(picks)) == 3 and not {0, 1} <= set(picks)


def test_diverse_margin_takes_uncertain_items_from_different_clusters():
    points, cluster = _clusters(n_per=10)
    # The model is unsure about everything in clusters 0 and 1, sure about 2 and 3; the
    # plain margin order would spend the whole batch on cluster 0 (its margins are lowest).
    margin = np.where(cluster == 0, 0.01, np.where(cluster == 1, 0.05, 0.9)) + np.linspace(0, 0.001, len(cluster))
    probs = np.stack([(1 + margin) / 2, (1 - margin) / 2], axis=1)
    order = diverse_margin_order(probs, points, batch_size=2, candidates_per_pick=10)
    assert sorted(cluster[order[:2]]) == [0, 1]
    assert sorted(order.tolist()) == list(range(len(cluster)))  # a full ordering
    plain = np.argsort(margin_scores(probs), kind="stable")[:2]
    assert set(cluster[plain]) == {0}


def test_cold_start_order_covers_the_clusters_first():
    points, cluster = _clusters()
    order = cold_start_order(points, seed=1)
    assert sorted(cluster[order[:4]]) == [0, 1, 2, 3]
    assert sorted(order.tolist()) == list(range(len(points)))


def test_order_to_scores_and_rejections():
    np.testing.assert_allclose(order_to_scores(np.array([2, 0, 1])), [2 / 4, 3 / 4, 1 / 4])
    with pytest.raises(BadInputError, match="exactly once"):
        order_to_scores(np.array([0, 0, 1]))
    with pytest.raises(BadInputError, match="NaN"):
        k_center_greedy(np.array([[np.nan, 1.0]]), 1)
    with pytest.raises(BadInputError, match="embeddings for"):
        diverse_margin_order(np.array([[0.5, 0.5]]), np.zeros((2, 3)))


def test_cold_start_head_is_diverse_and_the_rest_keeps_its_order():
    points, cluster = _clusters()
    order = cold_start_order(points, seed=1, head=4)
    assert sorted(cluster[order[:4]]) == [0, 1, 2, 3]
    rest = [i for i in range(len(points)) if i not in set(order[:4].tolist())]
    assert order[4:].tolist() == rest
    assert sorted(order.tolist()) == list(range(len(points)))


# --- pool_order: the one selection the loop and the benchmark share ---------------------------
from pipelines.strategies import pool_order  # noqa: E402


def test_pool_order_of_pointwise_strategies_is_their_score_order():
    probs = np.array([[0.9, 0.1], [0.55, 0.45], [0.7, 0.3], [0.55, 0.45]])
    assert pool_order("margin", probs).tolist() == [1, 3, 2, 0]  # ties keep pool order
    assert pool_order("least_confidence", probs).tolist() == [1, 3, 2, 0]
    assert pool_order("entropy", probs).tolist() == [1, 3, 2, 0]


def test_pool_order_random_is_seeded_and_a_permutation():
    probs = np.full((50, 3), 1 / 3)
    first, again = pool_order("random", probs, seed=7), pool_order("random", probs, seed=7)
    assert first.tolist() == again.tolist() and sorted(first.tolist()) == list(range(50))
    assert first.tolist() != pool_order("random", probs, seed=8).tolist()


def test_pool_order_diverse_margin_needs_embeddings_and_matches_the_batch_mode_order():
    points, cluster = _clusters(n_per=10)
    margin = np.where(cluster == 0, 0.01, 0.5) + np.linspace(0, 0.001, len(cluster))
    probs = np.stack([(1 + margin) / 2, (1 - margin) / 2], axis=1)
    with pytest.raises(BadInputError, match="embeddings"):
        pool_order("diverse_margin", probs)
    np.testing.assert_array_equal(
        pool_order("diverse_margin", probs, embeddings=points, batch_size=3),
        diverse_margin_order(probs, points, batch_size=3))
    with pytest.raises(ConfigError, match="unknown query strategy"):
        pool_order("nope", probs)


def test_every_score_stays_within_label_studios_range():
    rng = np.random.default_rng(0)
    probs = np.vstack([np.full((1, 7), 1 / 7), np.eye(7)[:2], rng.dirichlet(np.ones(7) * 0.1, 200)])
    for name in STRATEGIES:
        scores = get_strategy(name, seed=0).score(probs)
        assert np.all((scores >= 0.0) & (scores <= 1.0)), name
