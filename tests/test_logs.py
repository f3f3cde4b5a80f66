"""`musicrec.logs.log_json`: the JSON of the pipeline's log lines, floats rounded for reading."""

from __future__ import annotations

import json
import math

from musicrec.logs import log_json


def test_log_json_rounds_floats_to_significant_digits_and_keeps_the_rest() -> None:
    facts = {
        "ndcg": 0.005250622166446824,  # 4 significant digits: 0.005251
        "negative": -0.0048961572578974,  # -0.004896
        "seconds": 1547.96,  # 1548.0
        "share": 0.1,  # already short
        "zero": 0.0,
        "rows": 325496,  # ints as they are
        "name": "0.123456789",  # strings too
        "none": None,
        "nested": {"list": [0.123456789, 2, [9.87654321]], "tuple": (1.0, 0.33333333)},
    }
    assert json.loads(log_json(facts)) == {
        "ndcg": 0.005251,
        "negative": -0.004896,
        "seconds": 1548.0,
        "share": 0.1,
        "zero": 0.0,
        "rows": 325496,
        "name": "0.123456789",
        "none": None,
        "nested": {"list": [0.1235, 2, [9.877]], "tuple": [1.0, 0.3333]},
    }
    assert json.loads(log_json({"x": 0.123456789}, digits=2)) == {"x": 0.12}
    # non-finite floats pass through (json writes them as NaN / Infinity)
    out = json.loads(log_json({"nan": math.nan, "inf": math.inf}))
    assert math.isnan(out["nan"]) and out["inf"] == math.inf
