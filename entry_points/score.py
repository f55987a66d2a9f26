"""MLproject entry point `score`: parses the MLproject parameters and runs `wtag score`."""
import sys

from wtag.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
