#!/usr/bin/env bash
# Install OpenLDAP's slapd and ldap-utils for the LDAP connector's tests (and openssl, which the
# TLS tests use to make a throw-away CA, if it is missing).
#
# Idempotent: does nothing when /usr/sbin/slapd, ldapsearch and openssl are there. Installs the
# Debian packages non-interactively, runs `apt-get update` only if the first
# install attempt fails, and makes sure the system slapd service is neither
# running nor enabled: the tests start their own slapd on 127.0.0.1 in a
# temporary directory.
set -euo pipefail

SLAPD=/usr/sbin/slapd
PACKAGES=()
[ -x "$SLAPD" ] || PACKAGES+=(slapd)
command -v ldapsearch >/dev/null 2>&1 || PACKAGES+=(ldap-utils)
command -v openssl >/dev/null 2>&1 || PACKAGES+=(openssl)

stop_system_slapd() {
    # The package's postinst may start the service; the tests never use it.
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        systemctl stop slapd >/dev/null 2>&1 || true
        systemctl disable slapd >/dev/null 2>&1 || true
    fi
    if command -v service >/dev/null 2>&1; then
        service slapd stop >/dev/null 2>&1 || true
    fi
    if command -v update-rc.d >/dev/null 2>&1; then
        update-rc.d slapd disable >/dev/null 2>&1 || true
    fi
    # A daemon the init script could not stop: only the system instance, by its pid file.
    for pidfile in /run/slapd/slapd.pid /var/run/slapd/slapd.pid; do
        if [ -f "$pidfile" ]; then
            pid=$(cat "$pidfile" 2>/dev/null || true)
            if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
                kill "$pid" 2>/dev/null || true
            fi
        fi
    done
}

if [ ${#PACKAGES[@]} -eq 0 ]; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

# Keep the package from starting its service during installation (policy-rc.d 101 = "action forbidden").
POLICY=/usr/sbin/policy-rc.d
CREATED_POLICY=0
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
    $SUDO chmod 755 "$POLICY"
    CREATED_POLICY=1
fi
cleanup() {
    if [ "$CREATED_POLICY" = 1 ]; then
        $SUDO rm -f "$POLICY"
    fi
}
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
APT_OPTS=(-y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
if ! $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install "${APT_OPTS[@]}" "${PACKAGES[@]}"; then
    $SUDO apt-get update -q
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install "${APT_OPTS[@]}" "${PACKAGES[@]}"
fi

stop_system_slapd
test -x "$SLAPD"
echo "slapd installed: $($SLAPD -VVV 2>&1 | head -n 1)"
