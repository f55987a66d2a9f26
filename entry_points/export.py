"""MLproject entry point `export`: parses the MLproject parameters and runs `wtag export`."""
import sys

from wtag.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
