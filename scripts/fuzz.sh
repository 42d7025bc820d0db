#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time (NETSY_FUZZ_SECONDS each, default 30)
# over the committed corpus, failing on any crash. Installs cargo-fuzz if absent. The
# stable toolchain is used with RUSTC_BOOTSTRAP=1 (cargo fuzz passes -Z sanitizer flags).
# New inputs found during the run go to fuzz/new-corpus/<target> (ignored by git), so the
# tree stays clean; merge worthwhile ones into fuzz/corpus with `cargo fuzz cmin`.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${NETSY_FUZZ_SECONDS:-30}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz 0.13.2 (cargo install --locked)" >&2
  cargo install --locked --quiet cargo-fuzz@0.13.2
fi
export RUSTC_BOOTSTRAP=1
for target in decode_file requests; do
  echo "fuzz.sh: $target for ${seconds}s" >&2
  mkdir -p "corpus/$target" "new-corpus/$target"
  log="$(mktemp)"
  status=0
  cargo fuzz run --dev "$target" "new-corpus/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1 || status=$?
  grep -E "^stat::(number_of_executed_units|new_units_added)" "$log" || true
  if [ "$status" -ne 0 ]; then
    tail -60 "$log" >&2
    echo "fuzz.sh: $target failed (exit $status); the input is in fuzz/artifacts/$target" >&2
    exit 1
  fi
  rm -f "$log"
done
