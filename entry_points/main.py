"""MLproject entry point `main`: parses the MLproject parameters and runs `wtag main`."""
import sys

from wtag.cli import main

if __name__ == "__main__":
    sys.exit(main(["main", *sys.argv[1:]]))
