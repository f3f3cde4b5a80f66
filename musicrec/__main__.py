"""`python -m musicrec <command>`."""

import os

# implicit runs its own threads; a BLAS thread pool on top of them slows it down (set before
# numpy is imported by any command)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from musicrec.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
