"""Label-free threshold policies (oadbench/decisions.py): no threshold sees the current or a later score, each
policy is the statistic it names (numpy's quantile, SPOT's GPD tail from scipy, the normal-scaled MAD), warm-up
and named errors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from oadbench.decisions import Policy, decide, parse_policy, pot_threshold, thresholds
from oadbench.errors import ConfigError

RNG = np.random.default_rng(0)
SCORES = np.concatenate([RNG.gamma(2.0, 1.0, 300), RNG.gamma(2.0, 1.0, 40) + 4.0])[RNG.permutation(340)]
POLICIES = ["quantile", "quantile:q=0.9,window=50", "pot:refit=7", "pot:window=150,refit=3", "robust:k=2.5",
            "robust:window=30", "fixed:value=4"]


@pytest.mark.parametrize("text", POLICIES)
def test_a_threshold_never_sees_the_current_or_a_later_score(text):
    policy = parse_policy(text)
    rejected, t = decide(SCORES, policy)
    for i in (0, 19, 20, 57, 200, 339):
        changed = SCORES.copy()
        changed[i:] = RNG.normal(100.0, 50.0, changed.size - i)  # the present and the future, anything
        rejected2, t2 = decide(changed, policy)
        np.testing.assert_array_equal(t2[:i + 1], t[:i + 1])  # t_i comes from positions < i only
        np.testing.assert_array_equal(rejected2[:i], rejected[:i])


def test_quantile_is_numpys_quantile_of_the_window_and_warmup_decides_before_min_history():
    policy = parse_policy("quantile:q=0.95,window=40,min_history=25")
    rejected, t = decide(SCORES, policy)
    assert np.isnan(t[:25]).all() and not rejected[:25].any()  # warm-up: pass
    for i in (25, 30, 41, 339):
        assert t[i] == np.quantile(SCORES[max(0, i - 40):i], 0.95)
        assert rejected[i] == (SCORES[i] >= t[i])
    held, _ = decide(SCORES, parse_policy("quantile:q=0.95,window=40,min_history=25,warmup=reject"))
    assert held[:25].all() and (held[25:] == rejected[25:]).all()


def test_pot_threshold_has_the_asked_risk_under_scipys_gpd_fit():
    sample = RNG.standard_exponential(2000)
    z = pot_threshold(sample, init_q=0.95, alpha=1e-3)
    u = np.quantile(sample, 0.95)
    excess = sample[sample > u] - u
    gamma, _, sigma = stats.genpareto.fit(excess, floc=0.0)
    # SPOT's z is where the fitted tail's exceedance probability, scaled by the share of excesses, equals α
    assert excess.size / sample.size * stats.genpareto.sf(z - u, gamma, 0.0, sigma) == pytest.approx(1e-3, rel=1e-6)
    assert z > u and z == pytest.approx(-np.log(1e-3), rel=0.15)  # Exp(1): the true 1 - α quantile is ln 1000
    t = thresholds(sample[:300], parse_policy("pot:refit=50,init_q=0.9,alpha=0.01"))
    assert t[20] == pot_threshold(sample[:20], 0.9, 0.01) and t[69] == t[20] and t[70] == pot_threshold(
        sample[:70], 0.9, 0.01)  # refitted every 50 images from the first threshold on


def test_robust_is_median_plus_k_normal_scaled_mad_and_fixed_is_its_value():
    t = thresholds(SCORES, parse_policy("robust:k=2"))
    history = SCORES[:100]
    mad = 1.482602218505602 * np.median(np.abs(history - np.median(history)))  # 1 / Φ⁻¹(3/4)
    assert t[100] == pytest.approx(np.median(history) + 2 * mad, rel=1e-12)
    windowed = thresholds(SCORES, parse_policy("robust:k=2,window=30"))
    assert windowed[100] == thresholds(SCORES[70:101], parse_policy("robust:k=2,min_history=30"))[30]
    pot = thresholds(SCORES, parse_policy("pot:window=150"))
    assert pot[300] == pot_threshold(SCORES[150:300], 0.98, 0.001)
    rejected, t = decide(SCORES, parse_policy("fixed:value=4.5,min_history=0"))
    assert (t == 4.5).all() and (rejected == (SCORES >= 4.5)).all()


@pytest.mark.parametrize(("text", "key"), [
    ("median", r"decisions\.policy"), ("quantile:p=0.9", r"decisions\.quantile\.p"),
    ("quantile:q=1.5", r"decisions\.quantile\.q"), ("quantile:window=0", r"decisions\.quantile\.window"),
    ("pot:alpha=0", r"decisions\.pot\.alpha"), ("pot:refit=0.5", r"decisions\.pot\.refit"),
    ("robust:k=-1", r"decisions\.robust\.k"), ("fixed", r"decisions\.fixed\.value"),
    ("robust:window=0", r"decisions\.robust\.window"), ("fixed:value=1,window=5", r"decisions\.fixed\.window"),
    ("quantile:warmup=hold", r"decisions\.quantile\.warmup"), ("quantile:min_history=0", r"min_history"),
    ("quantile:q", r"expected key=value")])
def test_bad_policies_name_their_key(text, key):
    with pytest.raises(ConfigError, match=key):
        parse_policy(text)


def test_labels_list_the_non_default_parameters():
    assert parse_policy("quantile").label() == "quantile"
    assert parse_policy("quantile:window=200,q=0.995").label() == "quantile:q=0.995,window=200"
    assert Policy("pot", {"alpha": 0.01}) == parse_policy("pot:alpha=0.01")


def test_the_default_policy_is_written_in_its_canonical_form():
    from oadbench.decisions import DEFAULT_POLICY

    assert parse_policy(DEFAULT_POLICY).label() == DEFAULT_POLICY  # table labels and identities compare the text
