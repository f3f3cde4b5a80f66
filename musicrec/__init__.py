"""musicrec: a hybrid music recommender (ALS candidates + CatBoost reranking) over data in
the Yandex Music schema. Importing the package has no side effects."""

import time as _time

__version__ = "0.1.0"

#: when this process imported the package (before any of its modules): a module file
#: changed after it may not be the code this process runs (`musicrec.codehash`)
IMPORTED_AT = _time.time()
