#!/usr/bin/env bash
# What the exec tool's sandbox needs on a worker: bubblewrap (every exec), prlimit and nsenter
# (util-linux), and for agents with sandbox.network also slirp4netns and ip (iproute2).
# Installs what is missing when it can (root + apt-get); otherwise says how, and exec refuses to run
# until it is there (it never falls back to running commands unsandboxed).
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

missing=()
command -v bwrap >/dev/null || missing+=(bubblewrap)
command -v slirp4netns >/dev/null || missing+=(slirp4netns)
command -v ip >/dev/null || missing+=(iproute2)
{ command -v prlimit && command -v nsenter; } >/dev/null || missing+=(util-linux)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "exec sandbox: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } \
        || echo "exec sandbox: could not install ${missing[*]}; the exec tool will refuse to run until they are installed" >&2
else
    echo "exec sandbox: missing ${missing[*]}; install them (e.g. sudo apt-get install -y ${missing[*]})." \
         "Until then the exec tool refuses to run." >&2
fi
