"""MLproject entry point `prepare`: parses the MLproject parameters and runs `wtag prepare`."""
import sys

from wtag.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare", *sys.argv[1:]]))
