"""The evaluation's statistics on synthetic data whose answers are known: the cluster bootstrap's intervals, the
Fréchet distance of weighted resamples, paired differences and McNemar's exact test."""

import numpy as np
import pytest

from distill.shapes import metrics, stats


def _interval_of_mean(values: np.ndarray, clusters: np.ndarray, seed: int = 0) -> list[float]:
    weights = stats.stratified_cluster_weights(clusters, np.zeros(len(values), int), 400, seed)
    return stats.percentile_interval(stats.weighted_means(values, weights))


def test_resampling_draws_whole_clusters_and_keeps_each_stratum_s_size():
    clusters = np.repeat(np.arange(10), 3)  # 10 prompts x 3 seeds
    strata = np.repeat(["a", "b"], 15)  # prompts 0-4 in a, 5-9 in b
    weights = stats.stratified_cluster_weights(clusters, strata, 50, seed=1)
    assert weights.shape == (50, 30)
    assert (weights.reshape(50, 10, 3) == weights.reshape(50, 10, 3)[..., :1]).all()  # seeds stay with their prompt
    assert (weights[:, :15].sum(1) == 15).all() and (weights[:, 15:].sum(1) == 15).all()
    assert (weights == stats.stratified_cluster_weights(clusters, strata, 50, seed=1)).all()  # a fixed seed repeats
    assert len({tuple(w) for w in weights}) > 40  # and the resamples differ


def test_interval_of_a_mean_covers_the_truth_and_shrinks_as_one_over_root_n():
    rng = np.random.default_rng(0)
    small, large = (rng.random(n) < 0.3 for n in (400, 6400))
    lo_s, hi_s = _interval_of_mean(small, np.arange(400))
    lo_l, hi_l = _interval_of_mean(large, np.arange(6400))
    assert lo_s < 0.3 < hi_s and lo_l < 0.3 < hi_l
    assert (hi_l - lo_l) / (hi_s - lo_s) == pytest.approx(0.25, abs=0.07)  # 16x the items: a quarter of the width
    assert hi_s - lo_s == pytest.approx(2 * 1.96 * np.sqrt(0.3 * 0.7 / 400), rel=0.2)  # the normal approximation's width


def test_correlated_seeds_widen_the_interval_as_the_prompt_is_the_unit():
    """Four seeds that always agree carry the information of one: resampling prompts gives the width of 100
    items, resampling the 400 images as if independent would give half of it."""
    rng = np.random.default_rng(2)
    values = np.repeat(rng.random(100) < 0.5, 4)
    by_prompt = _interval_of_mean(values, np.repeat(np.arange(100), 4))
    by_image = _interval_of_mean(values, np.arange(400))
    assert (by_prompt[1] - by_prompt[0]) / (by_image[1] - by_image[0]) == pytest.approx(2.0, rel=0.25)


def test_frechet_of_weighted_sums_matches_the_plain_distance_per_stratum_and_pooled():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(60, 5)), rng.normal(0.5, 1.2, size=(60, 5))
    strata = np.repeat(["x", "y", "z"], 20)
    per_stratum, pooled = stats.frechet_bootstrap(a, b, np.ones((2, 60), int), strata)
    for s in "xyz":
        assert per_stratum[s] == pytest.approx([metrics.frechet_distance(a[strata == s], b[strata == s])] * 2, rel=1e-9)
    assert pooled == pytest.approx([metrics.frechet_distance(a, b)] * 2, rel=1e-9)
    repeated = np.r_[np.full(10, 2), np.zeros(10), np.ones(40)].astype(int)[None]  # x's first half twice, its second dropped
    per_stratum, pooled = stats.frechet_bootstrap(a, b, repeated, strata)
    keep = np.r_[np.arange(10), np.arange(10), np.arange(20, 60)]
    assert per_stratum["x"][0] == pytest.approx(metrics.frechet_distance(a[keep[:20]], b[keep[:20]]), rel=1e-9)
    assert pooled[0] == pytest.approx(metrics.frechet_distance(a[keep], b[keep]), rel=1e-9)


def test_frechet_interval_covers_the_true_distance_of_two_gaussians():
    """N(0, I) against N(d, I) in 8 dimensions with |d|^2 = 4: the true distance is 4."""
    rng = np.random.default_rng(4)
    shift = np.full(8, 1 / np.sqrt(2))
    a, b = rng.normal(size=(4000, 8)), rng.normal(size=(4000, 8)) + shift
    weights = stats.stratified_cluster_weights(np.arange(4000), np.zeros(4000, int), 200, seed=5)
    _, pooled = stats.frechet_bootstrap(a, b, weights, np.zeros(4000, int))
    lo, hi = stats.centred_interval(metrics.frechet_distance(a, b), pooled)
    assert lo < 4.0 < hi and hi - lo < 0.6


def test_centred_interval_moves_the_percentile_interval_onto_the_point_value():
    resamples = np.arange(101.0) + 50  # mean 100, percentiles 52.5 and 147.5
    assert stats.centred_interval(90.0, resamples) == pytest.approx([42.5, 137.5])


def test_repeated_prompts_inflate_a_small_set_s_frechet_resamples_and_the_centred_interval_keeps_the_point_value():
    """Two samples of one Gaussian in 16 dimensions, 60 items each: the distance's small-sample bias is large, and a
    resample with a third of its items repeated is farther still."""
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(60, 16)), rng.normal(size=(60, 16))
    weights = stats.stratified_cluster_weights(np.arange(60), np.zeros(60, int), 200, seed=0)
    _, pooled = stats.frechet_bootstrap(a, b, weights, np.zeros(60, int))
    point = metrics.frechet_distance(a, b)
    assert stats.percentile_interval(pooled)[0] > point  # the plain interval misses the point value
    lo, hi = stats.centred_interval(point, pooled)
    assert lo < point < hi


def test_paired_difference_of_identical_runs_is_exactly_zero():
    rng = np.random.default_rng(6)
    right = rng.random(80) < 0.4
    weights = stats.stratified_cluster_weights(np.repeat(np.arange(20), 4), np.zeros(80, int), 100, seed=0)
    d = stats.paired_difference(right, right.copy(), weights)
    assert d == {"difference": 0.0, "difference_ci95": [0.0, 0.0], "only_a_right": 0, "only_b_right": 0, "mcnemar_p": 1.0}


def test_paired_difference_counts_discordant_images_and_excludes_zero_for_a_clear_gain():
    a = np.zeros(200, bool)
    b = np.zeros(200, bool)
    b[::4] = True  # B right on 50 images A gets wrong
    a[1::20] = True  # A right on 10 that B gets wrong
    weights = stats.stratified_cluster_weights(np.arange(200), np.zeros(200, int), 300, seed=0)
    d = stats.paired_difference(a, b, weights)
    assert d["difference"] == pytest.approx(0.2)
    assert (d["only_a_right"], d["only_b_right"]) == (10, 50)
    assert 0 < d["difference_ci95"][0] < 0.2 < d["difference_ci95"][1]
    assert d["mcnemar_p"] == pytest.approx(stats.mcnemar_exact_p(10, 50))


@pytest.mark.parametrize(
    "only_a, only_b, p",
    [
        (0, 5, 2 / 32),  # 2 P(X <= 0), X ~ Bin(5, 1/2)
        (1, 9, 2 * (1 + 10) / 1024),  # 2 (C(10,0) + C(10,1)) / 2^10 with n = 10
        (8, 2, 2 * (1 + 10 + 45) / 1024),  # symmetric in the two sides
        (3, 3, 1.0),  # balanced: no evidence
        (0, 0, 1.0),  # no discordant pairs
    ],
)
def test_mcnemar_exact_p_against_hand_computed_binomials(only_a, only_b, p):
    assert stats.mcnemar_exact_p(only_a, only_b) == pytest.approx(p, rel=1e-12)
