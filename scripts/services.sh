#!/usr/bin/env bash
# Make sure the database servers the tests use answer: the local PostgreSQL (trust auth) and
# MariaDB (root without a password), started here when installed but stopped. Point the
# tests at other servers with BT_TEST_POSTGRES_URL and BT_TEST_MYSQL_URL.
set -euo pipefail

wait_for() {
    local what=$1 check=$2
    for _ in $(seq 1 30); do
        if eval "$check" >/dev/null 2>&1; then
            return 0
        fi
        sleep 1
    done
    echo "error: $what does not answer; start it, or set BT_TEST_POSTGRES_URL and" \
        "BT_TEST_MYSQL_URL to servers the tests may create schemas on" >&2
    return 1
}

if [ -z "${BT_TEST_POSTGRES_URL:-}" ] && ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
        echo "starting PostgreSQL"
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start || true
    fi
    wait_for "PostgreSQL on 127.0.0.1:5432" "pg_isready -q -h 127.0.0.1 -p 5432"
fi

if [ -z "${BT_TEST_MYSQL_URL:-}" ] && ! mariadb-admin -h 127.0.0.1 -u root ping >/dev/null 2>&1
then
    if [ -x /usr/sbin/mariadbd ]; then
        echo "starting MariaDB"
        start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
    fi
    wait_for "MariaDB on 127.0.0.1:3306" "mariadb-admin -h 127.0.0.1 -u root ping"
fi
