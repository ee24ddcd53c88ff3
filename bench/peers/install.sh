#!/usr/bin/env bash
# What bench/peers/run.py needs: the servers the peers use (Debian's redis-server and
# postgresql) and the peers themselves, at versions checked with channels 4.3 and Django 5.2.
# run.py calls this when something is missing; it is safe to run again.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

if ! command -v redis-server >/dev/null || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    $SUDO apt-get update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y redis-server postgresql
fi

# Keep the project's channels / Django; pin the peers and the harness's own needs.
python3 -m pip install \
    "channels>=4.3,<4.4" "Django>=5.2,<5.3" \
    "channels-redis==4.3.0" "redis==8.1.0" \
    "channels-lite[aio]==0.4.0" "aiosqlite==0.22.1" "aiosqlitepool==1.0.0" "msgspec==0.22.0" \
    "channels-postgres==1.1.4" "psycopg==3.3.9" "psycopg-pool==3.3.3" \
    "msgpack==1.2.4" "matplotlib==3.11.2"
