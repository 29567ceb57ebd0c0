#!/usr/bin/env bash
# condor-python.sh — give HTCondor jobs (which never run as root) an interpreter with this
# checkout's shoal: a world-readable copy of the CPython that runs the tests, at the same path
# on the host and inside the condor chroot, and a venv with the checkout's wheel installed.
#
#   sudo ci/clusters/condor-python.sh           # create or update (a no-op when up to date)
#   ci/clusters/condor-python.sh --check        # exit 0 if up to date with the checkout (any profile)
#   ci/clusters/condor-python.sh --print        # print the venv's python path
#
# Why: the pyenv Pythons live under /root (0700), unreadable by the job user, and the chroot's
# /usr/bin/python3 is another version. The copy's RUNPATH (absolute, into /root/.pyenv) is
# rewritten with patchelf so it loads its own libpython.
#
# Knobs: PYTHON [python3]            interpreter whose installation (sys.base_prefix) is copied
#        SHOAL_CONDOR_PYTHON [/opt/shoal-python]  where the copy and the venv go
#        SHOAL_WHEEL_PROFILE [release]  release | debug (debug builds faster, runs slower)
#        MATURIN [maturin on PATH, else .venv/bin/maturin]
#        SHOAL_CONDOR_ROOT [/var/lib/shoal-condor]  the chroot to bind the copy into
set -euo pipefail
LOG_TAG=condor-python
. "$(dirname "$(readlink -f "$0")")/lib.sh"
REPO=$(cd "$CLUSTERS_DIR/../.." && pwd)
DEST=${SHOAL_CONDOR_PYTHON:-/opt/shoal-python}
R=${SHOAL_CONDOR_ROOT:-/var/lib/shoal-condor}
PROFILE=${SHOAL_WHEEL_PROFILE:-release}
VENV_PY=$DEST/venv/bin/python

# what the installed wheel was built from
source_hash() {
  (cd "$REPO" && find crates python Cargo.toml Cargo.lock pyproject.toml -type f \
      -not -path '*/__pycache__/*' -not -name '*.so' -not -name '*.pyc' -print0 2>/dev/null |
    sort -z | xargs -0 sha1sum) | sha1sum | cut -c1-16
}
bound() { mountpoint -q "$R$DEST"; }
# up to date: same sources, visible in the chroot, and (unless $1 = any) the wanted profile
up_to_date() {
  [ -x "$VENV_PY" ] && [ "$(cat "$DEST/.source-hash" 2>/dev/null)" = "$(source_hash)" ] &&
    { [ "${1:-}" = any ] || [ "$(cat "$DEST/.profile" 2>/dev/null)" = "$PROFILE" ]; } &&
    { [ ! -d "$R/usr" ] || bound; }
}

case "${1:-}" in
  --check) up_to_date any; exit ;;
  --print) echo "$VENV_PY"; exit 0 ;;
  "") ;;
  *) sed -n '5,7p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
need_root
if up_to_date; then log "up to date ($VENV_PY)"; echo "$VENV_PY"; exit 0; fi

PY=${PYTHON:-python3}
BASE=$("$PY" -c 'import sys; print(sys.base_prefix)')
VER=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
STAMP="$BASE $("$PY" -c 'import sys; print(sys.version)' | head -1)"

# ------------------------------------------------------------- the interpreter copy
if [ "$(cat "$DEST/.base" 2>/dev/null)" != "$STAMP" ]; then
  command -v patchelf >/dev/null || apt_install patchelf
  log "copying $BASE to $DEST/cpython (without its site-packages and test suite)"
  if bound; then umount "$R$DEST"; fi
  rm -rf "$DEST"
  mkdir -p "$DEST/cpython"
  tar -C "$BASE" --exclude="./lib/python$VER/site-packages/*" --exclude="./lib/python$VER/test" \
      --exclude='__pycache__' -cf - . | tar -C "$DEST/cpython" -xf -
  # absolute RUNPATHs into the old prefix -> the copy's own lib/
  find "$DEST/cpython" -type f \( -perm -u+x -o -name '*.so*' \) -print0 |
  while IFS= read -r -d '' f; do
    rp=$(patchelf --print-rpath "$f" 2>/dev/null) || continue
    case "$rp" in *"$BASE"*) patchelf --set-rpath "${rp//$BASE/$DEST/cpython}" "$f" ;; esac
  done
  chmod -R a+rX "$DEST"
  chmod 0755 "$(dirname "$DEST")"
  echo "$STAMP" > "$DEST/.base"
fi
"$DEST/cpython/bin/python$VER" -c 'import ssl, ctypes, sqlite3' ||
  die "the copied interpreter $DEST/cpython does not work"

# ------------------------------------------------------------- the venv and the wheel
if [ ! -x "$VENV_PY" ]; then
  log "creating $DEST/venv"
  "$DEST/cpython/bin/python$VER" -m venv "$DEST/venv"
fi
MATURIN=${MATURIN:-$(command -v maturin || echo "$REPO/.venv/bin/maturin")}
[ -x "$MATURIN" ] || die "maturin not found (hint: run scripts/bootstrap, or set MATURIN=)"
WHEELS=$(mktemp -d)
trap 'rm -rf "$WHEELS"' EXIT
flag=--release; [ "$PROFILE" = debug ] && flag=""
log "building the shoal wheel ($PROFILE) with $MATURIN"
(cd "$REPO" && "$MATURIN" build $flag --quiet -i "$VENV_PY" -o "$WHEELS") > "$WHEELS/build.log" 2>&1 ||
  { tail -n 30 "$WHEELS/build.log" >&2; die "maturin build failed"; }
log "installing $(basename "$WHEELS"/*.whl) into $DEST/venv"
"$VENV_PY" -m pip install -q --disable-pip-version-check --force-reinstall "$WHEELS"/*.whl >&2
chmod -R a+rX "$DEST"
source_hash > "$DEST/.source-hash"
echo "$PROFILE" > "$DEST/.profile"

# ------------------------------------------------------------- visible inside the chroot
if [ -d "$R/usr" ] && ! bound; then
  mkdir -p "$R$DEST"
  mount --bind "$DEST" "$R$DEST"
  mount -o remount,bind,ro "$R$DEST"
  log "bound $DEST into $R (read-only)"
fi
runuser -u "$SHOAL_USER" -- "$VENV_PY" -c 'import shoal._native, cloudpickle' ||
  die "$SHOAL_USER cannot import shoal with $VENV_PY"
log "ready: $VENV_PY"
echo "$VENV_PY"
