# shellcheck shell=sh
# env.sh — source this (`. ci/clusters/env.sh`) for the client environment of the test clusters
# brought up by ci/clusters/cluster up: Slurm, Grid Engine and the chroot HTCondor pool.
export SLURM_CONF=/etc/slurm/slurm.conf
export SGE_ROOT=/var/lib/gridengine SGE_CELL=default
# HTCondor: host-side client config of the chroot pool (its tools are wrappers in /usr/local/bin)
export CONDOR_CONFIG="${SHOAL_CONDOR_ROOT:-/var/lib/shoal-condor}/host/condor_config"
# /usr/lib/gridengine first: the real SGE binaries, not Debian's slow /usr/bin/q* wrapper scripts
for _shoal_d in "${SHOAL_CONDOR_BIN:-/usr/local/bin}" /usr/lib/gridengine; do
  case ":$PATH:" in
    ":$_shoal_d:"*) ;;
    *) PATH="$_shoal_d:$(printf '%s' ":$PATH:" | sed "s|:$_shoal_d:|:|g; s|^:||; s|:\$||")" ;;
  esac
done
unset _shoal_d
export PATH
