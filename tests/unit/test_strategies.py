import numpy as np
import pytest

from loop.errors import BadInputError
from pipelines.strategies import (
    STRATEGIES,
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


def test_every_setting_value_names_a_strategy():
    from typing import get_args

    from loop.settings import Settings

    names = set(get_args(Settings.model_fields["query_strategy"].annotation))
    assert names == set(STRATEGIES)
    assert all(get_strategy(n).name == n for n in names)


def test_unknown_strategy_is_a_named_error():
    with pytest.raises(BadInputError, match="unknown query strategy 'nope'"):
        get_strategy("nope")
