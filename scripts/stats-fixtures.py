#!/usr/bin/env python3
"""Reference values for abgate's statistics module, computed with scipy (and mpmath where scipy has no routine).

Run once, commit the output; src/stats/*.test.ts assert that abgate agrees to >= 6 significant digits.
Works with Debian's python3-scipy (1.10) and with newer scipy + mpmath; the committed file records which was used.

    python3 scripts/stats-fixtures.py > src/stats/fixtures/reference.json

The references are independent of abgate's code: p-values of the two-proportion test come from
scipy.stats.chi2_contingency (Pearson chi-square without continuity correction, which equals the pooled z-test),
Welch's test from scipy.stats.ttest_ind_from_stats, SRM from scipy.stats.chisquare, chance to win from exact
rational arithmetic (Evan Miller's sum, small counts) and from scipy.integrate.quad over the Beta densities (large
counts), Benjamini-Hochberg from scipy.stats.false_discovery_control. Means and variances of the mean tests are
formed exactly with fractions from the same sufficient statistics that abgate receives.
"""
import json
import math
import sys
from fractions import Fraction

import numpy as np
import scipy
from scipy import integrate, special, stats

try:  # pyenv/pip python; Debian's python3-scipy comes without it
    import mpmath

    mpmath.mp.dps = 50
except ImportError:
    mpmath = None


def num(x):
    """JSON number or null (never NaN/Infinity)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


# ---------------------------------------------------------------- distributions
def distributions():
    out = {"normalSf": [], "normalCdf": [], "normalQuantile": [], "studentTSf": [], "studentTQuantile": [],
           "chiSquareSf": [], "logGamma": [], "logBeta": []}
    for z in [0, 0.1, 0.5, 1, 1.959963984540054, 2.5, 3, 5, 7.5, 8, 10, 15, 20, 30, 37]:
        out["normalSf"].append({"z": z, "value": num(stats.norm.sf(z))})
        out["normalCdf"].append({"z": -z, "value": num(stats.norm.cdf(-z))})
    for p in [1e-300, 1e-100, 1e-20, 1e-12, 1e-6, 0.001, 0.025, 0.05, 0.3, 0.5, 0.7, 0.95, 0.975, 0.999, 1 - 1e-12]:
        out["normalQuantile"].append({"p": p, "value": num(stats.norm.ppf(p))})
    for df in [1, 2, 2.5, 3.7, 10, 30, 100, 1000, 1e4, 1e6, 1e8]:
        for t in [-3, 0, 0.3, 1, 2, 3, 5, 10, 30]:
            # mpmath's 50-digit incomplete beta is the reference when present; scipy's t.sf otherwise
            if mpmath is not None:
                d, tt = mpmath.mpf(df), mpmath.mpf(t)
                tail = mpmath.betainc(d / 2, mpmath.mpf(1) / 2, 0, d / (d + tt * tt), regularized=True) / 2
                value = tail if t >= 0 else 1 - tail
            else:
                value = stats.t.sf(t, df)
            out["studentTSf"].append({"t": t, "df": df, "value": num(value), "scipy": num(stats.t.sf(t, df))})
        for p in [1e-10, 0.001, 0.025, 0.1, 0.6, 0.9, 0.975, 0.995]:
            out["studentTQuantile"].append({"p": p, "df": df, "value": num(stats.t.ppf(p, df))})
    for df in [1, 2, 3, 4, 7, 10, 99]:
        for x in [0, 0.01, 0.5, 1, 3.84, 10, 30, 100, 500]:
            out["chiSquareSf"].append({"x": x, "df": df, "value": num(stats.chi2.sf(x, df))})
    for x in [1e-8, 0.1, 0.5, 1, 1.5, 2, 3.7, 9.99, 10, 50.5, 1000, 1e8]:
        out["logGamma"].append({"x": x, "value": num(special.gammaln(x))})
    for a, b in [(0.5, 0.5), (1, 1), (2.5, 7), (0.5, 30), (5e7, 0.5), (1e6, 1e6), (12, 1e8), (3, 4e9)]:
        value = mpmath.log(mpmath.beta(a, b)) if mpmath is not None else special.betaln(a, b)
        out["logBeta"].append({"a": a, "b": b, "value": num(value)})
    return out


# ---------------------------------------------------------------- proportion test
def proportion_case(name, nc, cc, nt, ct, alpha=0.05):
    case = {"name": name, "control": {"units": nc, "conversions": cc}, "treatment": {"units": nt, "conversions": ct},
            "alpha": alpha}
    if nc == 0 or nt == 0:
        case["expected"] = {"z": None, "pValue": None, "error": "ZERO_UNITS"}
        return case
    pc, pt = cc / nc, ct / nt
    diff = pt - pc
    q = stats.norm.ppf(1 - alpha / 2)
    var_c, var_t = pc * (1 - pc) / nc, pt * (1 - pt) / nt
    pooled = (cc + ct) / (nc + nt)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / nc + 1 / nt))
    exp = {"absolute": {"estimate": diff, "ci": [diff - q * math.sqrt(var_c + var_t), diff + q * math.sqrt(var_c + var_t)]}}
    if pc > 0:
        r = pt / pc - 1
        se_r = math.sqrt(var_t / pc**2 + pt**2 * var_c / pc**4)
        exp["relative"] = {"estimate": r, "ci": [r - q * se_r, r + q * se_r]}
    else:
        exp["relative"] = {"estimate": None, "ci": None}
        exp["error"] = "CONTROL_RATE_ZERO"
    if var_c + var_t == 0:
        # each arm all-zero or all-one: the Wald interval has no width, and abgate gives none (equal arms too)
        exp["absolute"]["ci"] = None
        exp["relative"]["ci"] = None
        exp.setdefault("error", "ZERO_VARIANCE")
    if se0 == 0:
        exp.update({"z": 0, "pValue": 1})
        exp.setdefault("error", "ZERO_VARIANCE")
    else:
        table = np.array([[cc, nc - cc], [ct, nt - ct]], dtype=float)
        chi2, p, _, _ = stats.chi2_contingency(table, correction=False)
        z = diff / se0
        # chi2_contingency computes p = chi2.sf(z^2, 1), which agrees with the two-sided normal p
        assert abs(chi2 - z * z) <= 1e-9 * max(1, z * z), (name, chi2, z * z)
        exp.update({"z": z, "pValue": num(p)})
    case["expected"] = exp
    return case


def proportions():
    return [
        proportion_case("ordinary", 5012, 561, 4988, 653),
        proportion_case("spec example size, alpha 0.01", 5012, 561, 4988, 653, 0.01),
        proportion_case("no conversions in either arm", 100, 0, 100, 0),
        proportion_case("control without conversions", 100, 0, 120, 5),
        proportion_case("all conversions", 50, 50, 50, 50),
        proportion_case("all conversions in control", 50, 50, 60, 45),
        proportion_case("n of 1", 1, 0, 1, 1),
        proportion_case("n of 2", 2, 1, 2, 2),
        proportion_case("n of 1e8", 100_000_000, 10_000_000, 100_000_000, 10_005_000),
        proportion_case("extreme imbalance", 1_000_000, 100_000, 100, 15),
        proportion_case("p below 1e-12", 100_000, 10_000, 100_000, 11_500),
        proportion_case("p far below 1e-12", 1_000_000, 100_000, 1_000_000, 110_000),
        proportion_case("zero units", 0, 0, 10, 1),
        proportion_case("treatment worse", 20_000, 2_400, 20_000, 2_200),
    ]


# ---------------------------------------------------------------- Welch test
def suff(n, mean, sd):
    """Sufficient statistics of a sample with this mean and (n-1) standard deviation."""
    s = n * mean
    return {"n": n, "sum": float(s), "sumSquares": float((n - 1) * sd * sd + n * mean * mean)}


def mean_case(name, c, t, alpha=0.05):
    case = {"name": name, "control": c, "treatment": t, "alpha": alpha}

    def mv(x):
        n = Fraction(x["n"])
        s, ss = Fraction(x["sum"]), Fraction(x["sumSquares"])
        m = s / n
        v = (ss - s * m) / (n - 1) if n > 1 else Fraction(0)
        return m, v

    if c["n"] == 0 or t["n"] == 0:
        case["expected"] = {"pValue": None, "error": "ZERO_UNITS"}
        return case
    if c["n"] < 2 or t["n"] < 2:
        case["expected"] = {"pValue": None, "error": "TOO_FEW_UNITS"}
        return case
    mc, vc = mv(c)
    mt, vt = mv(t)
    if vc == 0 and vt == 0:
        case["expected"] = {"pValue": 1 if mc == mt else None, "error": "ZERO_VARIANCE"}
        return case
    res = stats.ttest_ind_from_stats(float(mt), math.sqrt(vt), t["n"], float(mc), math.sqrt(vc), c["n"], equal_var=False)
    a, b = vc / c["n"], vt / t["n"]
    df = float((a + b) ** 2 / (a**2 / (c["n"] - 1) + b**2 / (t["n"] - 1)))
    se = math.sqrt(float(a + b))
    q = stats.t.ppf(1 - alpha / 2, df)
    diff = float(mt - mc)
    exp = {"t": num(res.statistic), "df": df, "pValue": num(res.pvalue),
           "absolute": {"estimate": diff, "ci": [diff - q * se, diff + q * se]}}
    if mc != 0:
        r = float(mt / mc - 1)
        se_r = math.sqrt(float(b / mc**2 + mt**2 * a / mc**4))
        exp["relative"] = {"estimate": r, "ci": [r - q * se_r, r + q * se_r]}
    else:
        exp["relative"] = {"estimate": None, "ci": None}
        exp["error"] = "CONTROL_MEAN_ZERO"
    case["expected"] = exp
    return case


def means():
    return [
        mean_case("ordinary", suff(500, 10, 3), suff(480, 10.6, 3.2)),
        mean_case("unequal variances and sizes", suff(30, 5, 1), suff(1000, 5.4, 10)),
        mean_case("n of 2", {"n": 2, "sum": 3, "sumSquares": 5}, {"n": 2, "sum": 7, "sumSquares": 25}),
        mean_case("n of 1", {"n": 1, "sum": 3, "sumSquares": 9}, suff(10, 2, 1)),
        mean_case("n of 1e8", suff(100_000_000, 5, 2), suff(100_000_000, 5.0004, 2)),
        mean_case("extreme imbalance", suff(1_000_000, 100, 20), suff(50, 104, 25)),
        mean_case("p below 1e-12", suff(20_000, 10, 2), suff(20_000, 10.2, 2)),
        mean_case("zero variance, equal", {"n": 5, "sum": 10, "sumSquares": 20}, {"n": 7, "sum": 14, "sumSquares": 28}),
        mean_case("one arm constant", {"n": 5, "sum": 10, "sumSquares": 20}, suff(40, 2.5, 1)),
        mean_case("control mean zero", suff(100, 0, 1), suff(100, 0.3, 1)),
        mean_case("zero units", {"n": 0, "sum": 0, "sumSquares": 0}, suff(10, 1, 1)),
        mean_case("alpha 0.01", suff(200, 1, 0.5), suff(210, 1.1, 0.6), 0.01),
    ]


# ---------------------------------------------------------------- SRM
def srm_case(name, observed, weights):
    case = {"name": name, "observed": observed, "weights": weights}
    arms = [(o, w) for o, w in zip(observed, weights) if w > 0]
    if len(arms) < 2:
        case["expected"] = {"pValue": None, "error": "SINGLE_ARM"}
        return case
    total = sum(o for o, _ in arms)
    if total == 0:
        case["expected"] = {"pValue": None, "error": "ZERO_UNITS"}
        return case
    wsum = sum(w for _, w in arms)
    exp_counts = [total * w / wsum for _, w in arms]
    res = stats.chisquare([o for o, _ in arms], exp_counts)
    case["expected"] = {"chiSquare": num(res.statistic), "df": len(arms) - 1, "pValue": num(res.pvalue)}
    return case


def srms():
    return [
        srm_case("balanced", [5012, 4988], [50, 50]),
        srm_case("mismatch", [5300, 4700], [50, 50]),
        srm_case("p below 1e-12", [60_000, 40_000], [50, 50]),
        srm_case("three arms, uneven weights", [2010, 3050, 4940], [20, 30, 50]),
        srm_case("arm of weight 0 left out", [5000, 5050, 17], [50, 50, 0]),
        srm_case("single arm", [100], [1]),
        srm_case("no units", [0, 0], [1, 1]),
        srm_case("n of 1e8", [50_003_000, 49_997_000], [1, 1]),
        srm_case("n of 1", [1, 0], [1, 1]),
    ]


# ---------------------------------------------------------------- mSPRT
def sprt_case(diff, var_diff, tau2, alpha=0.05):
    m = mpmath if mpmath is not None else math
    f = mpmath.mpf if mpmath is not None else float
    d, v, t = f(diff), f(var_diff), f(tau2)
    log_lambda = m.log(m.sqrt(v / (v + t))) + t * d * d / (2 * v * (v + t))
    p = min(f(1), m.exp(-log_lambda))
    half = m.sqrt(v * (v + t) / t * (m.log((v + t) / v) - 2 * m.log(alpha)))
    return {"input": {"diff": diff, "varDiff": var_diff, "tau2": tau2, "alpha": alpha},
            "expected": {"logLambda": num(log_lambda), "pValue": num(p), "ci": [num(d - half), num(d + half)]}}


def sprts():
    return [sprt_case(0.019, 4e-5, 1e-4), sprt_case(0.0, 4e-5, 1e-4), sprt_case(-0.5, 0.01, 0.05, 0.1),
            sprt_case(0.02, 1e-6, 9e-5), sprt_case(1e-3, 1e-3, 1e-8), sprt_case(3.0, 0.2, 0.2)]


# ---------------------------------------------------------------- chance to win
def chance_exact(cc, nc, ct, nt):
    """Evan Miller's sum in exact rational arithmetic (small counts)."""
    def beta(a, b):
        return Fraction(math.factorial(a - 1) * math.factorial(b - 1), math.factorial(a + b - 1))
    a_a, b_a, a_b, b_b = cc + 1, nc - cc + 1, ct + 1, nt - ct + 1
    total = Fraction(0)
    for i in range(a_b):
        total += beta(a_a + i, b_a + b_b) / ((b_b + i) * beta(1 + i, b_b) * beta(a_a, b_a))
    return float(total)


def chance_quad(cc, nc, ct, nt):
    """P(p_T > p_C) = ∫ f_T(x) F_C(x) dx over the region holding the mass of both posteriors."""
    ac, bc, at, bt = cc + 1, nc - cc + 1, ct + 1, nt - ct + 1
    lo, hi = 1.0, 0.0
    for a, b in [(ac, bc), (at, bt)]:
        m = a / (a + b)
        sd = math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
        lo, hi = min(lo, m - 15 * sd), max(hi, m + 15 * sd)
    lo, hi = max(0.0, lo), min(1.0, hi)
    val, err = integrate.quad(lambda x: stats.beta.pdf(x, at, bt) * stats.beta.cdf(x, ac, bc), lo, hi,
                              limit=500, epsabs=1e-14, epsrel=1e-12, points=[at / (at + bt), ac / (ac + bc)])
    return val


def chances():
    out = []
    for name, c, t in [("n of 1", (0, 1), (1, 1)), ("n of 2", (1, 2), (2, 2)), ("empty", (0, 0), (0, 0)),
                       ("no conversions", (0, 100), (0, 100)), ("all conversions", (40, 40), (39, 40)),
                       ("small", (12, 100), (19, 100)), ("imbalanced", (3, 10), (60, 300)),
                       ("moderate", (112, 1000), (131, 1000))]:
        out.append({"name": name, "control": {"units": c[1], "conversions": c[0]},
                    "treatment": {"units": t[1], "conversions": t[0]}, "expected": chance_exact(c[0], c[1], t[0], t[1]),
                    "method": "exact rational sum"})
    for name, c, t in [("spec example", (561, 5012), (653, 4988)), ("large", (10_000, 100_000), (10_150, 100_000)),
                       ("n of 1e6, extreme imbalance", (100_000, 1_000_000), (33, 300)),
                       ("n of 1e8", (10_000_000, 100_000_000), (10_003_000, 100_000_000)),
                       ("n of 1e8, half convert", (50_000_000, 100_000_000), (49_990_000, 100_000_000))]:
        out.append({"name": name, "control": {"units": c[1], "conversions": c[0]},
                    "treatment": {"units": t[1], "conversions": t[0]}, "expected": chance_quad(c[0], c[1], t[0], t[1]),
                    "method": "scipy quad"})
    # cross-check: both references agree on a mid-size case
    assert abs(chance_exact(112, 1000, 131, 1000) - chance_quad(112, 1000, 131, 1000)) < 1e-10
    return out


# ---------------------------------------------------------------- multiple testing
def holm(ps):
    m = len(ps)
    order = sorted(range(m), key=lambda i: (ps[i], i))
    out, running = [0.0] * m, 0.0
    for j, i in enumerate(order):
        running = max(running, min(1.0, (m - j) * ps[i]))
        out[i] = running
    return out


def bh_by_hand(ps):
    m = len(ps)
    order = sorted(range(m), key=lambda i: (ps[i], i))
    out, running = [0.0] * m, 1.0
    for j in range(m - 1, -1, -1):
        i = order[j]
        running = min(running, min(1.0, m * ps[i] / (j + 1)))
        out[i] = running
    return out


def bh(ps):
    if hasattr(stats, "false_discovery_control"):  # scipy >= 1.11
        return [float(x) for x in stats.false_discovery_control(ps, method="bh")]
    return bh_by_hand(ps)


def adjustments():
    sets = [[0.01, 0.04, 0.03, 0.005], [0.5], [1e-15, 0.2, 0.2, 0.049, 0.051], [0.9, 0.8, 0.7], [0.0, 1.0, 0.025]]
    return [{"pValues": ps, "holm": holm(ps), "bh": bh(ps)} for ps in sets]


# ---------------------------------------------------------------- sample size
def sample_sizes():
    out = []
    for effect, vc, vt, sc, st, alpha, power in [(0.01, 0.09, 0.0924, 0.5, 0.5, 0.05, 0.8), (0.5, 4, 4, 0.2, 0.8, 0.05, 0.9),
                                                 (-0.02, 0.25, 0.25, 1 / 3, 1 / 3, 0.01, 0.8)]:
        z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
        out.append({"input": {"effect": effect, "varianceControl": vc, "varianceTreatment": vt, "shareControl": sc,
                              "shareTreatment": st, "alpha": alpha, "power": power},
                    "expected": math.ceil(z * z * (vc / sc + vt / st) / effect**2)})
    return out


def main():
    doc = {
        "generatedBy": "scripts/stats-fixtures.py",
        "versions": {"python": sys.version.split()[0], "scipy": scipy.__version__, "numpy": np.__version__,
                     "mpmath": mpmath.__version__ if mpmath is not None else None},
        "distributions": distributions(),
        "proportionTest": proportions(),
        "meanTest": means(),
        "srmTest": srms(),
        "mixtureSprt": sprts(),
        "chanceToWin": chances(),
        "adjustPValues": adjustments(),
        "fixedHorizonUnits": sample_sizes(),
    }
    json.dump(doc, sys.stdout, indent=1, allow_nan=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
