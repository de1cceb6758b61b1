#!/usr/bin/env bash
# Install and start what the integration tests need: the DCMTK command line
# tools, Orthanc with its DICOMweb plugin (started by the tests and the
# benchmarks themselves), Debian's chromium for the browser tests, and a
# PostgreSQL 15 cluster with a login role for the tests.
#
# Safe to run again: each step checks its state first. Runs as root, the way
# CI and the development machines run it.

set -euo pipefail

PG_VERSION=15
PG_CLUSTER=main
PG_PORT=5432
PG_ROLE=dicomvault
PG_PASSWORD=dicomvault
PG_READY_TIMEOUT_SECONDS=60
# Installed by the Debian package orthanc-dicomweb; bench/servers.py loads it from here.
ORTHANC_DICOMWEB_PLUGIN=/usr/share/orthanc/plugins/libOrthancDicomWeb.so
# The browser tests drive this binary with Playwright; Playwright never downloads its own.
CHROMIUM=/usr/bin/chromium

log() {
    printf 'services.sh: %s\n' "$*"
}

install_packages() {
    # DCMTK's tools and Orthanc are peers of the integration tests. The tests
    # start Orthanc themselves, inside a network namespace of their own. The
    # DICOMweb benchmark loads Orthanc's DICOMweb plugin from its package.
    # The browser tests (tests/browser) run Debian's chromium headless.
    local missing=()
    command -v storescu >/dev/null 2>&1 || missing+=(dcmtk)
    command -v Orthanc >/dev/null 2>&1 || missing+=(orthanc)
    [[ -e "$ORTHANC_DICOMWEB_PLUGIN" ]] || missing+=(orthanc-dicomweb)
    [[ -x "$CHROMIUM" ]] || missing+=(chromium)
    if [[ ${#missing[@]} -eq 0 ]]; then
        log "DCMTK, Orthanc and its DICOMweb plugin, chromium found: $(command -v storescu)," \
            "$(command -v Orthanc), $ORTHANC_DICOMWEB_PLUGIN, $CHROMIUM"
        return
    fi
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y "${missing[@]}"
}

check_dcmtk() {
    # The tests run DCMTK's tools by name. Another program of the same name
    # earlier on PATH (pynetdicom's storescu script, say) would fail them all.
    local tool version
    for tool in storescu storescp findscu movescu getscu echoscu; do
        # Read the whole output first: grep -q would stop reading early, and
        # with pipefail the tool's SIGPIPE would fail the check.
        version=$("$tool" --version 2>/dev/null || true)
        if [[ $version != *dcmtk* ]]; then
            log "'$tool' on PATH ($(command -v "$tool")) is not DCMTK's; put /usr/bin before it in PATH or remove it"
            exit 1
        fi
    done
}

cluster_status() {
    # Prints the Status column of pg_lsclusters for our cluster ("online",
    # "down", ...), or nothing when the cluster does not exist.
    pg_lsclusters --no-header 2>/dev/null \
        | awk -v version="$PG_VERSION" -v cluster="$PG_CLUSTER" \
            '$1 == version && $2 == cluster { print $4 }'
}

start_postgres() {
    local status
    status="$(cluster_status)"
    if [[ -z "$status" ]]; then
        log "PostgreSQL cluster $PG_VERSION/$PG_CLUSTER not found (pg_lsclusters); install postgresql-$PG_VERSION"
        exit 1
    fi
    if [[ "$status" == online* ]]; then
        log "PostgreSQL $PG_VERSION/$PG_CLUSTER already running"
    else
        log "starting PostgreSQL $PG_VERSION/$PG_CLUSTER (status: $status)"
        pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" start
    fi
}

wait_for_postgres() {
    local deadline=$((SECONDS + PG_READY_TIMEOUT_SECONDS))
    until pg_isready --quiet --host 127.0.0.1 --port "$PG_PORT"; do
        if ((SECONDS >= deadline)); then
            log "PostgreSQL on 127.0.0.1:$PG_PORT not ready after ${PG_READY_TIMEOUT_SECONDS}s"
            exit 1
        fi
        sleep 0.5
    done
    log "PostgreSQL ready on 127.0.0.1:$PG_PORT"
}

psql_as_postgres() {
    runuser -u postgres -- psql --no-psqlrc --quiet --set ON_ERROR_STOP=1 \
        --port "$PG_PORT" --dbname postgres "$@"
}

create_role() {
    local exists
    exists="$(psql_as_postgres --tuples-only --no-align \
        --command "SELECT 1 FROM pg_roles WHERE rolname = '$PG_ROLE'")"
    if [[ "$exists" == "1" ]]; then
        # Reset the password and rights so a role left by an older setup works too.
        psql_as_postgres --command \
            "ALTER ROLE $PG_ROLE WITH LOGIN CREATEDB PASSWORD '$PG_PASSWORD'"
        log "role $PG_ROLE exists, password and CREATEDB reset"
    else
        psql_as_postgres --command \
            "CREATE ROLE $PG_ROLE WITH LOGIN CREATEDB PASSWORD '$PG_PASSWORD'"
        log "role $PG_ROLE created"
    fi
}

install_packages
check_dcmtk
start_postgres
wait_for_postgres
create_role
