"""Task functions for the local benchmark (importable, so every library pickles them by name)."""

import time


def noop(x):
    return x


def sleep10ms(x):
    time.sleep(0.01)
    return x


def sleep200ms(x):
    time.sleep(0.2)
    return x
