#!/usr/bin/env bash
# isolated-down.sh — the cluster whose machines share no filesystem: slurm-multinode-down.sh with
# MN_LAYOUT=isolated (layout: slurm-multinode-env.sh).
MN_LAYOUT=isolated exec "$(dirname "$(readlink -f "$0")")/slurm-multinode-down.sh" "$@"
