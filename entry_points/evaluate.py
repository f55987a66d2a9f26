"""MLproject entry point `evaluate`: parses the MLproject parameters and runs `wtag evaluate`."""
import sys

from wtag.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
