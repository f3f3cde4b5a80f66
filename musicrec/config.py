"""Pipeline parameters: pydantic models with defaults and `extra="forbid"`, loadable from a
TOML or YAML file (`load_config`) or built in the notebook's first cell."""

from __future__ import annotations

import json
import re
import textwrap
import tomllib
from datetime import date, time
from pathlib import Path
from typing import Literal, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from musicrec.columns import DEFAULT_FEATURES, FEATURES
from musicrec.errors import ConfigError


class _Strict(BaseModel):
    # no inf or nan: no parameter means anything with them (and TOML could not print them
    # as JSON would)
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


#: the largest seed: numpy's generators take any non-negative seed, CatBoost an unsigned
#: 32-bit one at the least (a bag's models take random_seed .. random_seed + bag_size - 1)
SEED_MAX = 2**32 - 64


class DataConfig(_Strict):
    max_unknown_track_share: float = Field(
        0.01,
        ge=0,
        le=1,
        description="Fail if more interactions than this share name unknown tracks",
    )
    sample_users_share: float = Field(
        1.0, gt=0, le=1, description="Share of users kept (1.0 = all; for quick exploration only)"
    )
    seed: int = Field(42, ge=0, le=SEED_MAX, description="Seed of the user sampling")


class SplitConfig(_Strict):
    test_start: date | None = Field(None, description="First day of the test window")
    test_share: float = Field(0.10, gt=0, lt=1, description="Tail share if test_start unset")
    label_share: float = Field(
        0.10,
        gt=0,
        lt=1,
        description="Share of pre-test events in the label window (ranker labels, ALS tuning)",
    )


#: CatBoost losses the ranker can train with (on the CPU: QueryCrossEntropy is GPU-only)
RANKER_LOSSES = frozenset(
    {
        "YetiRank",
        "YetiRankPairwise",
        "PairLogit",
        "PairLogitPairwise",
        "LambdaMart",
        "StochasticRank",
        "QueryRMSE",
        "QuerySoftMax",
        "Logloss",
        "CrossEntropy",
        "RMSE",
    }
)


class ALSConfig(_Strict):
    factors: int = Field(64, ge=1, description="Latent factors")
    regularization: float = Field(0.01, ge=0, description="L2 regularisation of the factors")
    alpha: float = Field(
        10.0, gt=0, description="Confidence of a listen (implicit 0.7: alpha*value)"
    )
    iterations: int = Field(15, ge=1, description="Alternating least-squares sweeps")
    warm_start_iterations: int | None = Field(
        None,
        ge=1,
        description="Fit the served ALS (history before the test window) from the factors of "
        "the label-window ALS with this many iterations instead of `iterations` from random "
        "ones (the two histories differ by one label window); None = a cold fit",
    )
    random_state: int = Field(
        42, ge=0, le=SEED_MAX, description="Seed of the factors' initialisation"
    )
    tune: bool = Field(
        True,
        description="Grid search (the three grids below) on the label window, never the "
        "test window; its pick replaces factors, regularization and alpha",
    )
    tune_max_users: int | None = Field(
        30_000,
        ge=1,
        description="Users (a random subset, all their listens) the tuning grid is fit on; "
        "None = every user. The chosen parameters are then fit on every user",
    )
    tune_windows: int = Field(
        1,
        ge=1,
        le=12,
        description="Label windows the grid is scored on, newest first (as the ranker's "
        "`label_windows`); the pick has the best mean NDCG over them. 1: the newest only. "
        "More steadies a pick made on few users per window (Last.fm: each of five windows "
        "picked another point, docs/quality.md), at one grid search per window",
    )
    # each grid needs a value: an empty one made `tune` pick nothing, silently
    factors_grid: list[int] = Field([32, 64], min_length=1, description="Tuning grid")
    regularization_grid: list[float] = Field([0.01, 0.1], min_length=1, description="Tuning grid")
    alpha_grid: list[float] = Field([5.0, 20.0], min_length=1, description="Tuning grid")
    n_recs: int = Field(100, ge=1, le=1000, description="ALS recommendations kept per user")
    max_scored_items: int | None = Field(
        None,
        ge=1,
        description="Score users (and similar tracks) only against this many most-listened "
        "tracks; None = every track. Bounds the cost of scoring at full scale",
    )
    batch_size: int = Field(10_000, ge=1, description="Users scored per batch")


class SimilarConfig(_Strict):
    k: int = Field(20, ge=1, le=500, description="Similar tracks kept per track")
    batch_size: int = Field(4096, ge=1, description="Tracks per batch")


class RankerConfig(_Strict):
    # at most 10,000 of each per user (ranks are stored as int16; a reranker over more
    # candidates per user would be scoring most of a catalogue anyway)
    als_candidates: int = Field(100, ge=1, le=10_000, description="ALS candidates per user")
    popular_candidates: int = Field(
        50, ge=0, le=10_000, description="Popular candidates per user (unheard)"
    )
    similar_candidates: int = Field(
        50, ge=0, le=10_000, description="Candidates similar to the latest listens per user"
    )
    recent_tracks: int = Field(5, ge=1, description="Latest tracks whose neighbours are candidates")
    negatives_per_user: int = Field(
        30, ge=1, description="Candidates without a label-window listen kept per user"
    )
    iterations: int = Field(300, ge=1, description="CatBoost trees")
    learning_rate: float = Field(0.05, gt=0, description="CatBoost learning rate")
    depth: int = Field(6, ge=1, le=16, description="CatBoost tree depth")
    l2_leaf_reg: float = Field(
        3.0, ge=0, description="CatBoost's L2 regularisation of leaf values (its default, 3)"
    )
    loss_function: str = Field(
        "YetiRank:permutations=1",
        description="CatBoost loss; one YetiRank permutation trains ~3x faster, same NDCG on demo",
    )
    thread_count: int = Field(2, ge=-1, description="CatBoost threads (-1: every core; not 0)")
    random_seed: int = Field(
        42,
        ge=0,
        le=SEED_MAX,
        description="CatBoost seed (of the first model of a bag), and the seed of the "
        "sampling of training rows and of the candidate-recall users",
    )
    bag_size: int = Field(
        1,
        ge=1,
        le=20,
        description="CatBoost models fit on the same rows with seeds random_seed, "
        "random_seed + 1, ...; the saved ranker is their average (one model file). More "
        "than 1 steadies a small data set's ranking against the seed; training costs that "
        "many fits",
    )
    features: list[str] | None = Field(
        None,
        description="The features the ranker is trained on, a subset of "
        "musicrec.columns.FEATURES (kept in that order); None: DEFAULT_FEATURES (all but "
        "the opt-in user_genre_cosine). For feature "
        "studies: compare lists on a label window (bench/ranker_variants.py --holdout), "
        "not on the test window",
    )
    recent_days: int = Field(30, ge=1, description="Window for 'recent popularity'")
    genre_min_listeners: int = Field(
        0,
        ge=0,
        description="The genre features (main_genre, user_genre_share, user_genre_cosine) "
        "treat a candidate with at most this many listeners in the history as having no "
        "genre. 0: genres "
        "always used. For data sets whose genres were derived from the listens themselves "
        "after the label windows (Last.fm: from tags before the test window), where a "
        "rarely heard track's genre in a label window was made by that window's own "
        "listeners",
    )
    max_train_users: int | None = Field(
        50_000,
        ge=1,
        description="Users per label window in the training sample (bounds CatBoost's time)",
    )
    label_windows: int = Field(
        1,
        ge=1,
        le=12,
        description="Label windows pooled for training, newest first: the first is "
        "split.label_share of the pre-test history, each next one the same share of the "
        "history before the previous; each has its own first stage fit on the data before "
        "it. More windows = more training users (helps small data sets), one more ALS fit "
        "each",
    )
    window_weight_decay: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Training weight of label window w's queries: decay**w (w = 0 the "
        "newest window, the one closest to what is predicted); 1: every window alike",
    )
    inference_batch_users: int = Field(
        25_000,
        ge=1,
        description="Users per batch when scoring every user and when labelling the label "
        "users; a batch's candidates and features set the peak memory at full size (25,000: "
        "scoring peak 13.26 GiB against 14.97 with 50,000, same time; docs/benchmarks.md)",
    )

    @property
    def feature_names(self) -> list[str]:
        """The features the ranker is fit on: `features`, or DEFAULT_FEATURES."""
        return self.features or DEFAULT_FEATURES

    @field_validator("loss_function")
    @classmethod
    def _known_loss(cls, loss: str) -> str:
        """A CatBoost loss this ranker trains with (`Name` or `Name:param=value;...`),
        checked here rather than by CatBoost after the ALS stages have run."""
        name, _, params = loss.partition(":")
        if name not in RANKER_LOSSES:
            raise ValueError(f"unknown loss {name!r}; one of {sorted(RANKER_LOSSES)}")
        if name == "StochasticRank" and "metric=" not in params:
            raise ValueError("StochasticRank needs its metric, e.g. 'StochasticRank:metric=NDCG'")
        return loss

    @field_validator("thread_count")
    @classmethod
    def _some_threads(cls, n: int) -> int:
        """CatBoost takes -1 (every core) or a count; 0 failed only when the ranker ran."""
        if n == 0:
            raise ValueError("thread_count must be -1 (every core) or at least 1")
        return n

    @field_validator("features")
    @classmethod
    def _known_features(cls, names: list[str] | None) -> list[str] | None:
        if names is None:
            return None
        unknown = [n for n in names if n not in FEATURES]
        if unknown:
            raise ValueError(f"unknown features {unknown}; known: {FEATURES}")
        if not names or len(set(names)) != len(names):
            raise ValueError("features must be a non-empty list without repeats")
        return [f for f in FEATURES if f in names]


class EvalConfig(_Strict):
    k_precision: int = Field(5, ge=1, le=1000, description="k of Precision@k, Recall@k")
    k_ndcg: int = Field(10, ge=1, le=1000, description="k of NDCG@k and MAP@k")
    candidate_recall_users: int | None = Field(
        50_000,
        ge=1,
        description="The candidate-recall diagnostic is computed on a random sample of at "
        "most this many warm users (it regenerates every candidate: ~5 min at the full "
        "size for all 750k warm users); None: every warm user. The metrics always use "
        "every user",
    )


class PipelineConfig(_Strict):
    data: DataConfig = DataConfig()
    split: SplitConfig = SplitConfig()
    als: ALSConfig = ALSConfig()
    similar: SimilarConfig = SimilarConfig()
    ranker: RankerConfig = RankerConfig()
    eval: EvalConfig = EvalConfig()
    top_k: int = Field(100, ge=1, le=1000, description="Recommendations stored per user")
    top_popular_k: int = Field(
        1000, ge=1, description="Length of the top-popular list (at least the metrics' k)"
    )
    final_fit: Literal["before_test", "all"] = Field(
        "before_test",
        description="Fit served artifacts on data before the test window, or refit on all",
    )

    @model_validator(mode="after")
    def _lists_as_long_as_the_metrics(self) -> PipelineConfig:
        """The evaluated lists hold at least the metrics' k tracks: with `eval.k_ndcg` above
        `top_k` the ranker (or above `als.n_recs` ALS) would be scored on a shorter list
        than the popular baseline and lose points for it."""
        k = max(self.eval.k_precision, self.eval.k_ndcg)
        # top_popular_k: the cold users' list is the served top-popular file, which the
        # evaluation scored as a fresh top k: a shorter file scored better than served
        for name, length in (
            ("top_k", self.top_k),
            ("als.n_recs", self.als.n_recs),
            ("top_popular_k", self.top_popular_k),
        ):
            if length < k:
                raise ValueError(
                    f"{name} = {length} is shorter than the metrics' k = {k} (eval.k_ndcg / "
                    f"eval.k_precision): raise {name} or lower the k"
                )
        if self.ranker.als_candidates < k:
            # the ranker orders its candidates only, and ALS's are the source that always
            # fills: fewer of them made lists shorter than k, scored at k against full ones
            raise ValueError(
                f"ranker.als_candidates = {self.ranker.als_candidates} is fewer than the "
                f"metrics' k = {k}: the ranker's lists could be shorter than k"
            )
        head = self.als.max_scored_items
        if head is not None and head <= max(self.als.n_recs, self.similar.k):
            # ALS and similar tracks score only the head: a track's similar list is drawn
            # from it, and every user who heard most of it would be scored twice (ALS tops
            # such a user up from the whole catalogue)
            raise ValueError(
                f"als.max_scored_items = {head} must exceed als.n_recs ({self.als.n_recs}) "
                f"and similar.k ({self.similar.k}): the lists are drawn from those tracks"
            )
        return self


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's floats: `1e-3` and `5e-2` are numbers (YAML 1.1,
    which PyYAML follows, reads them as strings, which the strict check then refused)."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
        |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _read_yaml(text: str) -> object:
    """`text` read by `_Yaml12Loader` (a SafeLoader: plain data only, nothing executed)."""
    loader = _Yaml12Loader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _as_json_value(value: object) -> str:
    """The JSON form of the dates and times TOML and YAML parse natively (ISO 8601)."""
    if isinstance(value, date | time):  # datetime is a date
        return value.isoformat()
    raise TypeError(f"a value of type {type(value).__name__} ({value!r}) has no config meaning")


def _toml_value(value: object) -> str:
    """A config value in TOML (JSON's strings, numbers and lists are TOML's; a day is
    unquoted; a float keeps its decimal point)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, int | float):
        return json.dumps(value)  # finite (the models allow no inf or nan): TOML's form too
    raise TypeError(f"no TOML form for {value!r}")


#: TOML's short escapes; any other control character is written as \uXXXX
_TOML_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def _toml_string(text: str) -> str:
    """`text` as a TOML basic string: quotes, backslashes and control characters escaped,
    everything else (any Unicode) as it is."""
    out = []
    for ch in text:
        if ch in _TOML_ESCAPES:
            out.append(_TOML_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _field_note(info: FieldInfo) -> str:
    """A field's description, limits and choices, for a comment (empty when none)."""
    words = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<", "min_length": "items >="}
    limits = [
        f"{words[name]} {getattr(m, name)}"
        for m in info.metadata
        for name in words
        if getattr(m, name, None) is not None
    ]
    if get_origin(info.annotation) is Literal:
        limits.append("one of " + ", ".join(_toml_value(v) for v in get_args(info.annotation)))
    parts = [info.description or "", f"({', '.join(limits)})" if limits else ""]
    return " ".join(p for p in parts if p)


def config_as_toml(cfg: PipelineConfig) -> str:
    """`cfg` as a TOML config file listing every key, each with its description and
    limits as a comment; a key that is None (TOML has no null) is a commented-out line.
    `load_config` reads the text back to `cfg`: a config with None where the default is
    not None (e.g. `als.tune_max_users`: every user), which no TOML file can say, is a
    `ConfigError` naming the keys (a YAML file can: `tune_max_users: null`)."""
    top: list[str] = []
    tables: list[str] = []
    unsayable: list[str] = []
    for name, value in cfg:
        if isinstance(value, BaseModel):
            tables.append(f"\n[{name}]")
            fields = [
                (f"{name}.", sub, getattr(value, sub), info)
                for sub, info in type(value).model_fields.items()
            ]
            out = tables
        else:
            fields = [("", name, value, type(cfg).model_fields[name])]
            out = top
        for prefix, key, val, info in fields:
            if val is None and info.default is not None:
                unsayable.append(prefix + key)
            out.append(_toml_line(key, val, info))
    if unsayable:
        raise ConfigError(
            f"{', '.join(unsayable)}: None cannot be written in TOML, which has no null, and "
            "the default is not None (a YAML config can say it: `key: null`; `python -m "
            "musicrec config --format yaml` prints one)"
        )
    head = [
        "# musicrec pipeline parameters (`python -m musicrec config`): pass a file like this",
        "# with `python -m musicrec pipeline --config FILE`; omitted keys keep their defaults",
        "",
    ]
    return "\n".join([*head, *top, *tables]) + "\n"


def config_as_yaml(cfg: PipelineConfig) -> str:
    """`cfg` as a YAML config file listing every key (None as `null`), each with its
    description and limits as a comment: what `config_as_toml` prints, for the configs TOML
    cannot say. Each value is written by PyYAML itself, so `load_config` reads it back."""
    lines = [
        "# musicrec pipeline parameters (`python -m musicrec config --format yaml`): pass a",
        "# file like this with `python -m musicrec pipeline --config FILE.yaml`; omitted keys",
        "# keep their defaults",
        "",
    ]
    tables: list[str] = []
    for name, value in cfg:
        if isinstance(value, BaseModel):
            tables.append(f"\n{name}:")
            for sub, info in type(value).model_fields.items():
                tables.append(_yaml_line(sub, getattr(value, sub), info, indent="  "))
        else:
            lines.append(_yaml_line(name, value, type(cfg).model_fields[name]))
    return "\n".join([*lines, *tables]) + "\n"


def _yaml_line(name: str, value: object, info: FieldInfo, indent: str = "") -> str:
    """The key's line, after its note as comment lines."""
    note = textwrap.wrap(
        _field_note(info),
        86,
        initial_indent=f"{indent}# ",
        subsequent_indent=f"{indent}# ",
        break_on_hyphens=False,
    )
    # ASCII only: PyYAML writes U+0085 (NEL) raw when allowed Unicode, and reads it back
    # as a line break ("x\x85y" came back as "x y"); escaped, every string round-trips
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=False, width=2**31 - 1)
    text = text.rstrip("\n").removesuffix("\n...")  # a scalar's end-of-document mark
    return "\n".join([*note, f"{indent}{name}: {text}"])


def _toml_line(name: str, value: object, info: FieldInfo) -> str:
    """The key's line, after its note as comment lines."""
    note = textwrap.wrap(
        _field_note(info), 86, initial_indent="# ", subsequent_indent="# ", break_on_hyphens=False
    )
    line = f"# {name} = (unset)" if value is None else f"{name} = {_toml_value(value)}"
    return "\n".join([*note, line])


def load_config(path: str | Path | None) -> PipelineConfig:
    """Read a TOML (`.toml`) or YAML (`.yaml`/`.yml`) file; `None` gives the defaults.

    The file's values are checked strictly, as JSON would be: `k_ndcg = true`, `factors =
    "64"`, `factors = 64.0` or `tune = 1` are errors naming the key, not the numbers 1 and
    64 and the flag True that pydantic's lax mode would make of them (an integer is still
    a float). A day is a date (`2022-12-01`, unquoted in TOML, or a YYYY-MM-DD string),
    not a date-time. The notebook's `PipelineConfig(...)` keeps pydantic's usual mode.
    """
    if path is None:
        return PipelineConfig()
    path = Path(path)
    if path.suffix not in (".toml", ".yaml", ".yml"):
        raise ConfigError(f"{path}: config must be .toml, .yaml or .yml")
    try:
        text = path.read_text()
        raw = tomllib.loads(text) if path.suffix == ".toml" else (_read_yaml(text) or {})
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the config ({type(exc).__name__}: {exc})") from exc
    try:
        as_json = json.dumps(raw, default=_as_json_value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: invalid config: {exc}") from exc
    try:
        return PipelineConfig.model_validate_json(as_json, strict=True)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in err['loc']) or '(top level)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"{path}: invalid config: {problems}") from exc
