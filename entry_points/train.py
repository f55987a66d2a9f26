"""MLproject entry point `train`: parses the MLproject parameters and runs `wtag train`."""
import sys

from wtag.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
