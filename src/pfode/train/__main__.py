"""``python -m pfode.train ARGS`` is ``pfode train ARGS`` (for ``torchrun ... -m pfode.train CONFIG --out DIR``)."""

import sys

from ..cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
