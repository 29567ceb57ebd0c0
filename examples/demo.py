"""shoal demo: the same code on local processes (default) or a cluster backend.

scripts/demo                      # local processes
scripts/demo --backend slurm      # needs a Slurm cluster (see ci/clusters)
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import math
import time

import shoal


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    return all(n % d for d in range(2, math.isqrt(n) + 1))


def flaky(x: int) -> float:
    if x == 13:
        raise ValueError("13 is unlucky")
    return 1 / (x + 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--backend", default="local", help="local (default), slurm, htcondor or sge")
    ap.add_argument("--workers", type=int, default=None, help="number of workers")
    args = ap.parse_args()

    print(f"shoal {shoal.__version__}: backend={args.backend}")
    t = time.perf_counter()
    with shoal.Pool(args.workers, backend=args.backend, progress=True) as pool:
        primes = sum(pool.map(is_prime, range(200_000)))
        print(f"Pool.map: {primes} primes below 200,000 in {time.perf_counter() - t:.2f} s")
        r = pool.apply_async(divmod, (7, 2))
        print(f"Pool.apply_async(divmod, (7, 2)) -> {r.get(timeout=60)}")
        squares = sorted(pool.imap_unordered(lambda x: x * x, range(10), chunksize=4))
        print(f"Pool.imap_unordered(lambda) -> {squares}")
        try:
            pool.map(flaky, range(20))
        except ValueError as exc:
            print(f"a failing task re-raises in the driver: ValueError({exc})")
            print(f"  with the remote traceback attached:{exc.__cause__}".rstrip()[:400])

    with shoal.Executor(max_workers=args.workers, backend=args.backend) as ex:
        futs = [ex.submit(pow, 2, i) for i in range(64)]
        total = sum(f.result() for f in cf.as_completed(futs))
        print(f"Executor.submit + as_completed: sum of 2**0..2**63 = {total}")
    print("done; list kept sessions with `shoal sessions`")


if __name__ == "__main__":
    main()
