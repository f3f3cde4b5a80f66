"""`python -m musicrec <command>`."""

from musicrec.cli import main

if __name__ == "__main__":
    main()
