"""MLproject entry point `tune`: parses the MLproject parameters and runs `wtag tune`."""
import sys

from wtag.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
