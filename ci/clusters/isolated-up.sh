#!/usr/bin/env bash
# isolated-up.sh — the cluster whose machines share no filesystem: slurm-multinode-up.sh with
# MN_LAYOUT=isolated (layout: slurm-multinode-env.sh).
MN_LAYOUT=isolated exec "$(dirname "$(readlink -f "$0")")/slurm-multinode-up.sh" "$@"
