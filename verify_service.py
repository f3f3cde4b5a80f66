"""Check the three running services end to end; writes `service_test.log`.

Usage: `python verify_service.py [--recs-url URL] [--similar-url URL] [--events-url URL]
[--log PATH]` (defaults from the settings / `MUSICREC_*` environment; also
`python -m musicrec verify`). Exits non-zero when any check fails.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Parse the flags and run `musicrec.verify.run_verification`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recs-url", default=None)
    parser.add_argument("--similar-url", default=None)
    parser.add_argument("--events-url", default=None)
    parser.add_argument("--log", default="service_test.log", help="Where to write the log")
    args = parser.parse_args(argv)

    from musicrec.errors import ConfigError
    from musicrec.verify import run_verification

    try:
        return run_verification(
            recs_url=args.recs_url,
            similar_url=args.similar_url,
            events_url=args.events_url,
            log_path=args.log,
        )
    except ConfigError as exc:  # bad settings or URLs: nothing was checked
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
