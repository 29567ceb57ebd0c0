"""Entry point of the `shoal` command installed with the wheel: the CLI itself is Rust."""

from __future__ import annotations

import sys

from shoal import _native


def main() -> None:
    sys.exit(_native.cli_main(["shoal", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
