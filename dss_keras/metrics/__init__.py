"""Metrics: scoring generated labels (`scoring`) and the Keras token means (`token_mean`).

`scoring` is plain Python (no TensorFlow); `TokenMean` loads Keras when first
used.
"""

from dss_keras.metrics.scoring import (
    ABS_TOL,
    BENCHMARKS,
    EQUATION_BENCHMARKS,
    EXACT_MATCH_BENCHMARKS,
    MAX_EXPRESSION_LENGTH,
    MAX_MAGNITUDE,
    REL_TOL,
    Score,
    check_benchmark,
    equation_match,
    evaluate_arithmetic,
    exact_match,
    normalize_text,
    score_predictions,
    values_equal,
)


def __getattr__(name):
    if name == "TokenMean":
        from dss_keras.metrics.token_mean import TokenMean

        return TokenMean
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
