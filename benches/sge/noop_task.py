"""The benchmark's task, in a module of its own: pypoolparty imports the mapped function by
module name on the execution host, so it must live on the workers' import path."""


def noop(x: int) -> int:
    return x
