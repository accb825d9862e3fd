"""Uncertainty of the shapes evaluation: a cluster bootstrap over prompts, percentile intervals, the Fréchet distance
of weighted samples, paired differences and McNemar's exact test.

The unit of resampling is the prompt, not the image: the seeds of one prompt share its caption and its real scene,
so their images are correlated, and resampling images would understate the spread.
"""

import numpy as np
from scipy.linalg.lapack import dpstrf
from scipy.stats import binomtest


def stratified_cluster_weights(clusters: np.ndarray, strata: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) integer weights: in every resample, each stratum's k distinct clusters are drawn k times with
    replacement, and item i's weight w_bi is how often its cluster was drawn. A statistic of the weighted items is
    the statistic of the resampled set (items repeated w_bi times); the strata keep their sizes, as the design fixes
    them (the same number of prompts per group)."""
    rng = np.random.default_rng(seed)
    weights = np.zeros((resamples, len(clusters)), dtype=np.int64)
    for stratum in dict.fromkeys(strata.tolist()):  # first-seen order: the draws do not depend on how strata sort
        members = np.flatnonzero(strata == stratum)
        ids, which = np.unique(clusters[members], return_inverse=True)
        counts = rng.multinomial(len(ids), np.full(len(ids), 1 / len(ids)), size=resamples)
        weights[:, members] = counts[:, which]
    return weights


def percentile_interval(values: np.ndarray, level: float = 0.95) -> list[float]:
    """[q((1 - level) / 2), q((1 + level) / 2)]: the percentile interval of a bootstrap distribution."""
    tail = (1 - level) / 2 * 100
    return [float(x) for x in np.percentile(values, [tail, 100 - tail])]


def centred_interval(point: float, values: np.ndarray, level: float = 0.95) -> list[float]:
    """The percentile interval moved by the resamples' offset from the point value: [q_lo - (m - x), q_hi - (m - x)]
    with m the resamples' mean and x the point value, i.e. the resamples' spread around the point value. For the
    Fréchet distance, which grows as a sample's distinct items shrink, every resample (repeating about a third of
    the prompts) sits above the point value, and the plain percentile interval can miss it altogether."""
    offset = float(np.mean(values)) - point
    return [end - offset for end in percentile_interval(values, level)]


def weighted_means(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per resample b: sum_i w_bi v_i / sum_i w_bi."""
    return weights @ values.astype(np.float64) / weights.sum(1)


def frechet_from_moments(mean_a: np.ndarray, cov_a: np.ndarray, mean_b: np.ndarray, cov_b: np.ndarray) -> float:
    """|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^1/2). With S_a = L L^T, L^T S_b L is symmetric and has the
    eigenvalues of S_a S_b, so tr (S_a S_b)^1/2 is the sum of the roots of its eigenvalues. L comes from LAPACK's
    pivoted Cholesky (dpstrf: P^T S_a P = U^T U, L = P U^T, stopping at S_a's numerical rank, so a singular S_a is
    fine): a quarter of the time of S_a's eigendecomposition, which the bootstrap repeats hundreds of times."""
    factor, pivots, rank, _ = dpstrf(cov_a, lower=0)
    root_a = np.empty((len(cov_a), rank))
    root_a[pivots - 1] = np.triu(factor)[:rank].T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a.T @ cov_b @ root_a), 0, None)).sum()
    mu = mean_a - mean_b
    return float(mu @ mu + np.trace(cov_a) + np.trace(cov_b) - 2 * cross)


def _moments(x: np.ndarray, w: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(n, s, Q) = (sum w_i, sum w_i x_i, sum w_i x_i x_i^T): sums, so that strata add up to the pooled set. Items a
    resample left out (w_i = 0) are skipped: about a third of them, and Q is the bootstrap's other big cost."""
    drawn = w > 0
    x, w = x[drawn], w[drawn]
    return float(w.sum()), w @ x, (x.T * w) @ x


def _frechet_of_sums(a: tuple, b: tuple) -> float:
    """Mean s / n and unbiased covariance (Q - n m m^T) / (n - 1) of both sums, then their Fréchet distance."""

    def mean_cov(n, s, q):
        m = s / n
        return m, (q - n * np.outer(m, m)) / (n - 1)

    return frechet_from_moments(*mean_cov(*a), *mean_cov(*b))


def frechet_bootstrap(a: np.ndarray, b: np.ndarray, weights: np.ndarray, strata: np.ndarray) -> tuple[dict, np.ndarray]:
    """Fréchet distances of every resample, per stratum and pooled: rows i of `a` (generated) and `b` (real) are
    paired (same prompt and seed) and both take weight w_bi, so a resample redraws whole prompts on both sides.
    Returns ({stratum: (resamples,)}, (resamples,)). The pooled set's moments are the sums of the strata's, so its
    covariances cost nothing extra. Repeated items shrink a resample's effective size, and the distance's positive
    small-sample bias grows as it shrinks: the distribution sits above the point value (centred_interval)."""
    names = list(dict.fromkeys(strata.tolist()))
    rows = {s: np.flatnonzero(strata == s) for s in names}
    parts = {s: (a[rows[s]].astype(np.float64), b[rows[s]].astype(np.float64)) for s in names}
    per_stratum, pooled = {s: np.empty(len(weights)) for s in names}, np.empty(len(weights))
    for k, w in enumerate(weights):
        total_a, total_b = None, None
        for s in names:
            ma, mb = _moments(parts[s][0], w[rows[s]]), _moments(parts[s][1], w[rows[s]])
            per_stratum[s][k] = _frechet_of_sums(ma, mb)
            total_a = ma if total_a is None else tuple(x + y for x, y in zip(total_a, ma))
            total_b = mb if total_b is None else tuple(x + y for x, y in zip(total_b, mb))
        pooled[k] = _frechet_of_sums(total_a, total_b)
    return per_stratum, pooled


def paired_difference(right_a: np.ndarray, right_b: np.ndarray, weights: np.ndarray) -> dict:
    """B - A on the same items: mean(b) - mean(a), its percentile interval over the resamples (the same weights for
    both sides, so what the items share cancels), and McNemar's discordant pairs (only A right, only B right) with
    the exact two-sided p-value."""
    a, b = right_a.astype(bool), right_b.astype(bool)
    diff = b.astype(np.float64) - a
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    return {
        "difference": float(diff.mean()),
        "difference_ci95": percentile_interval(weighted_means(diff, weights)),
        "only_a_right": only_a,
        "only_b_right": only_b,
        "mcnemar_p": mcnemar_exact_p(only_a, only_b),
    }


def mcnemar_exact_p(only_a: int, only_b: int) -> float:
    """Exact McNemar: under H0 each of the n = only_a + only_b discordant pairs goes either way with probability 1/2,
    p = min(1, 2 P(X <= min(only_a, only_b))) with X ~ Binomial(n, 1/2); 1 without discordant pairs. It treats the
    pairs as independent; images of one prompt are not, so the p-value is optimistic (the bootstrap interval is not)."""
    n = only_a + only_b
    return 1.0 if n == 0 else float(binomtest(min(only_a, only_b), n, 0.5).pvalue)
