import numpy as np
import pytest

from loop.errors import BadInputError
from pipelines.strategies import Margin, get_strategy, margin_scores


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

    def test_most_uncertain_item_scores_lowest(self):
        probs = np.array([[0.98, 0.01, 0.01], [0.34, 0.33, 0.33], [0.7, 0.2, 0.1]])
        assert int(np.argmin(self.strategy.score(probs))) == 1


class TestMargin(StrategyContract):
    strategy = Margin()

    def test_known_values(self):
        probs = np.array([[0.6, 0.3, 0.1], [0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
        np.testing.assert_allclose(margin_scores(probs), [0.3, 0.0, 1.0])

    def test_one_class_has_nothing_to_learn(self):
        np.testing.assert_allclose(margin_scores(np.array([[1.0], [1.0]])), [1.0, 1.0])

    def test_ties_keep_equal_scores(self):
        scores = margin_scores(np.array([[0.4, 0.4, 0.2], [0.2, 0.4, 0.4]]))
        assert scores[0] == scores[1] == 0.0


def test_unknown_strategy_is_a_named_error():
    with pytest.raises(BadInputError, match="unknown query strategy 'nope'"):
        get_strategy("nope")
