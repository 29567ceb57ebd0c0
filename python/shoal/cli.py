"""Entry point of the `shoal` command installed with the wheel: the CLI itself is Rust."""

from __future__ import annotations

import os
import sys

from shoal import _native


def main() -> None:
    # `shoal run` starts its driver as `$SHOAL_PYTHON -m shoal.runner`: this interpreter.
    os.environ.setdefault("SHOAL_PYTHON", sys.executable)
    sys.exit(_native.cli_main(["shoal", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
