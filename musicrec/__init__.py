"""musicrec: a hybrid music recommender (ALS candidates + CatBoost reranking) over data in
the Yandex Music schema. Importing the package has no side effects."""

__version__ = "0.1.0"
