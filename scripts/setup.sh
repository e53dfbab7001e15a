#!/usr/bin/env bash
# Set up a development environment: a virtualenv in .venv with mailferry and its test tools,
# plus the Debian packages the end-to-end tests talk to (Postfix's smtp-source/smtp-sink, swaks,
# openssl s_client, Chromium for the web UI's browser tests).
# Safe to run again; it only installs what is missing. Never starts or configures the system Postfix.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v swaks >/dev/null 2>&1 || need_apt+=(swaks)
command -v smtp-source >/dev/null 2>&1 || need_apt+=(postfix)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
# Cyrus SASL for the private Postfix submission server (tests/support/postfix_submission.py,
# bench/submission.py): saslpasswd2 and the PLAIN/LOGIN/sasldb plugins.
command -v saslpasswd2 >/dev/null 2>&1 || [ -x /usr/sbin/saslpasswd2 ] || need_apt+=(sasl2-bin)
ls /usr/lib/*/sasl2/libplain.so.2 >/dev/null 2>&1 || need_apt+=(libsasl2-modules)
# The web UI's browser tests drive Debian's Chromium with Playwright (no browser download).
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    # Debian's postfix asks questions on install; preseed "No configuration" so nothing is set up
    # or started: we only want its smtp-source / smtp-sink binaries and private instances.
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    echo "setup: please install these Debian packages: ${need_apt[*]} (tests that need them will fail)" >&2
  fi
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'
