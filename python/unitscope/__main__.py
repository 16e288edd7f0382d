"""`python -m unitscope COMMAND ...`: the same as the `unitscope` command."""
import sys

from unitscope.cli import main

if __name__ == "__main__":
    sys.exit(main())
