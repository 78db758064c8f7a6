#!/usr/bin/env bash
# The deploy hook as a plain script: run it where the app's configuration is (the same
# tenantfleet.toml / TENANTFLEET_* variables as the workers), after the new code is on the workers.
#   deploy/shell/migrate.sh            # every tenant to head
#   deploy/shell/migrate.sh --wave 10  # any `tenantfleet migrate` option passes through
# It exits with tenantfleet's code, so the deploy decides what a failed tenant means.
set -uo pipefail

timeout="${TENANTFLEET_MIGRATE_TIMEOUT:-1800}"  # seconds to follow the run; it goes on after
tenantfleet migrate --wait --timeout "$timeout" --json "$@" > migrate.json
status=$?
case "$status" in
  0) echo "migrate: every selected tenant is at the target" ;;
  1) echo "migrate: some tenants failed or were skipped (migrate.json); fix, then \`tenantfleet retry RUN\`" >&2
     tenantfleet status >&2 ;;  # the failures, their errors, the slowest tenants
  3) echo "migrate: still running after ${timeout} s; the workers go on (\`tenantfleet status\`)" >&2 ;;
  *) echo "migrate: refused, nothing changed: $(head -c 500 migrate.json)" >&2 ;;
esac
exit "$status"
