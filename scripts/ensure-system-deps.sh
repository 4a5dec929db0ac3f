#!/usr/bin/env bash
# Install the Debian packages the project needs when they are missing. Idempotent; needs root
# (or sudo) only when something is missing.
#   scripts/ensure-system-deps.sh          the reports: Pango (WeasyPrint) and the DejaVu fonts;
#                                          the jail of untrusted models: bubblewrap (bwrap)
#   scripts/ensure-system-deps.sh --test   also the test tools: Chromium (the dashboard tests,
#                                          driven by Playwright) and poppler-utils (pdftoppm)
# Used by `make install` and `make test`.
set -euo pipefail

missing=()
ldconfig -p | grep -q 'libpango-1.0.so.0' || missing+=(libpango-1.0-0)
ldconfig -p | grep -q 'libpangoft2-1.0.so.0' || missing+=(libpangoft2-1.0-0)
[ -d /usr/share/fonts/truetype/dejavu ] || missing+=(fonts-dejavu-core)
# the jail every PyTorch-format validation and audit runs in (app/sandbox.py, docs/security.md)
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
if [ "${1:-}" = "--test" ]; then
  # test tools: not needed by the service (nor in its Docker image)
  command -v chromium >/dev/null 2>&1 || missing=("${missing[@]}" chromium)
  command -v pdftoppm >/dev/null 2>&1 || missing=("${missing[@]}" poppler-utils)
fi

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "ensure-system-deps: installing ${missing[*]}"
if ! command -v apt-get >/dev/null 2>&1; then
  echo "ensure-system-deps: apt-get not found; install ${missing[*]} with your package manager" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
