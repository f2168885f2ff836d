#!/usr/bin/env bash
# The benchmarks against two runsc builds in one run: Debian 12's (2022-12, ptrace only) and
# Debian 13's (2024-07, systrap), each with its own state directory, and one Markdown report
# with both outputs and a summary of the headline figures (old, new, old / new).
#
# usage: bench/compare-runsc.sh [HUTCH_BIN] [REPORT]
#   HUTCH_BIN  the release hutch binary (default target/release/hutch). The bench binaries
#              are taken from the same directory: `cargo build --release -p hutch-bench --bins`.
#   REPORT     the Markdown report (default target/bench-runsc.md); every run's stdout and
#              stderr are kept in REPORT.d/.
# Env: OLD_RUNSC (default /opt/hutch/runsc-20221219/runsc, `make setup` puts it there),
#      NEW_RUNSC (default /usr/bin/runsc), HUTCH_BENCH_N (passed on to every benchmark),
#      HUTCH_FIXTURES (as for the benchmarks). HUTCH_RUNSC_PLATFORM is cleared: each build
#      runs on the platform Hutch chooses for it (ptrace for the old one; for the new one the
#      faster of systrap and ptrace at fork+exec on this machine).
#
# Each benchmark runs with the old runsc, then at once with the new one, before the next
# benchmark starts, so that a change in the machine's load falls on both sides alike.
# Run as root on a quiet machine; the whole comparison takes about ten minutes on two cores.
set -euo pipefail

HUTCH_BIN="$(realpath -m "${1:-target/release/hutch}")"
REPORT="$(realpath -m "${2:-target/bench-runsc.md}")"
OLD_RUNSC="${OLD_RUNSC:-/opt/hutch/runsc-20221219/runsc}"
NEW_RUNSC="${NEW_RUNSC:-/usr/bin/runsc}"
BIN_DIR="$(dirname "$HUTCH_BIN")"
OUT="$REPORT.d"
# Short: the sandboxes' sockets live below the state directory.
HOME_OLD=/tmp/hb-runsc-old
HOME_NEW=/tmp/hb-runsc-new

die() { echo "compare-runsc.sh: error: $*" >&2; exit 1; }
log() { echo "compare-runsc.sh: $*" >&2; }

[[ $EUID -eq 0 ]] || die "must run as root (runsc and the overlay mounts need it)"
[[ -x $HUTCH_BIN ]] || die "no hutch binary at $HUTCH_BIN: cargo build --release"
for b in hutch-bench hutch-bench-runtime hutch-bench-build; do
	[[ -x $BIN_DIR/$b ]] || die "no $BIN_DIR/$b: cargo build --release -p hutch-bench --bins"
done
for r in "$OLD_RUNSC" "$NEW_RUNSC"; do
	[[ -x $r ]] || die "no runsc at $r (make setup installs both)"
done
mkdir -p "$OUT"

# (sed reads to the end: a reader that stops early would fail the pipe under pipefail)
version() { "$1" --version 2>/dev/null | sed -n '1s/^runsc version //p'; }
OLD_VERSION="$(version "$OLD_RUNSC")"
NEW_VERSION="$(version "$NEW_RUNSC")"

# run SIDE NAME ARGS...: one benchmark with the runsc of SIDE (old|new); its stdout and
# stderr go to $OUT/NAME.SIDE.{md,log}. A failure is recorded in the .md and does not stop
# the comparison.
run() {
	local side=$1 name=$2 runsc home
	shift 2
	case $side in
	old) runsc=$OLD_RUNSC home=$HOME_OLD ;;
	new) runsc=$NEW_RUNSC home=$HOME_NEW ;;
	esac
	log "$name with the $side runsc ($runsc)"
	local start=$SECONDS rc=0
	env -u HUTCH_RUNSC_PLATFORM HUTCH_RUNSC="$runsc" HUTCH_BENCH_HOME="$home" \
		HUTCH_BIN="$HUTCH_BIN" "$@" >"$OUT/$name.$side.md" 2>"$OUT/$name.$side.log" || rc=$?
	if ((rc != 0)); then
		log "$name with the $side runsc failed (exit $rc); see $OUT/$name.$side.log"
		{
			echo
			echo "**$name failed (exit $rc)**; the last lines of its log ($OUT/$name.$side.log):"
			echo
			echo '```'
			tail -n 15 "$OUT/$name.$side.log"
			echo '```'
		} >>"$OUT/$name.$side.md"
	fi
	log "$name with the $side runsc took $((SECONDS - start)) s"
}

HUTCH_BUILT="$(date -u -r "$HUTCH_BIN" '+%Y-%m-%d %H:%M UTC')"
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
STARTED="$(date -u '+%Y-%m-%d %H:%M UTC')"
for side in old new; do run "$side" hutch-bench "$BIN_DIR/hutch-bench"; done
for side in old new; do run "$side" runtime "$BIN_DIR/hutch-bench-runtime" "$HUTCH_BIN"; done
for side in old new; do run "$side" build "$BIN_DIR/hutch-bench-build" "$HUTCH_BIN"; done
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"

# summary TABLE_ROW_REGEX MEDIAN_COLUMN RATIO_COLUMN NAME [SUFFIX]: one summary row per
# table row of NAME's old report that matches, beside the row of the same figure in the new
# report, its label followed by SUFFIX. Columns count from the line's leading `|` (the figure
# is column 2); RATIO_COLUMN 0 leaves the ratios out.
summary() {
	local regex=$1 median=$2 ratio=$3 name=$4 suffix=${5:-}
	awk -F'|' -v regex="$regex" -v mcol="$median" -v rcol="$ratio" -v suffix="$suffix" '
		function trim(s) { gsub(/^[ \t]+|[ \t]+$/, "", s); return s }
		function msec(s) { s = trim(s); return (s ~ / ms$/) ? s + 0 : -1 }
		$0 ~ regex {
			fig = trim($2)
			r = (rcol > 0) ? trim($rcol) : "—"
			if (FILENAME == ARGV[1]) { order[++n] = fig; om[fig] = trim($mcol); oratio[fig] = r }
			else { nm[fig] = trim($mcol); nratio[fig] = r }
		}
		END {
			for (i = 1; i <= n; i++) {
				f = order[i]
				speed = "—"
				if ((f in nm) && msec(om[f]) > 0 && msec(nm[f]) > 0)
					speed = sprintf("%.2f", msec(om[f]) / msec(nm[f]))
				printf "| %s%s | %s | %s | %s | %s | %s |\n", f, suffix, om[f], \
					((f in nm) ? nm[f] : "missing"), speed, oratio[f], ((f in nratio) ? nratio[f] : "—")
			}
		}' "$OUT/$name.old.md" "$OUT/$name.new.md"
}

# A benchmark's own report under this report's `###` heading: its headings shifted so that
# its highest one is a `####`.
demote() {
	awk 'NR == FNR {
			if (match($0, /^#+ /) && (min == 0 || RLENGTH - 1 < min)) min = RLENGTH - 1
			next
		}
		match($0, /^#+ /) { $0 = substr("######", 1, 4 + RLENGTH - 1 - min) substr($0, RLENGTH) }
		{ print }' "$1" "$1"
}

{
	echo "# runsc $OLD_VERSION against runsc $NEW_VERSION, $STARTED"
	echo
	echo "| Setting | |"
	echo "|---|---|"
	echo "| Old runsc | \`$OLD_RUNSC\`: $OLD_VERSION |"
	echo "| New runsc | \`$NEW_RUNSC\`: $NEW_VERSION |"
	echo "| hutch | \`$HUTCH_BIN\`, built $HUTCH_BUILT |"
	echo "| Machine | $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), kernel $(uname -r) |"
	echo "| Load average (1, 5, 15 min) | $LOAD_BEFORE before, $LOAD_AFTER after |"
	echo "| HUTCH_BENCH_N | ${HUTCH_BENCH_N:-unset (the defaults of each benchmark)} |"
	echo
	echo "Each benchmark ran with the old runsc, then with the new one, before the next one;"
	echo "each runsc had its own state directory ($HOME_OLD, $HOME_NEW) and the platform Hutch"
	echo "detects for it."
	echo
	echo "## Summary"
	echo
	echo "Medians. Old / new above 1 means the new runsc is faster. The ratios are each"
	echo "figure's own, from the same run: ours / raw runsc for hutch-bench, sandbox / host for"
	echo "the workloads, ours / buildah for the builds."
	echo
	echo "| Figure | Old | New | Old / new | Old ratio | New ratio |"
	echo "|---|---|---|---|---|---|"
	summary '^\| (1|1b|2|3)\. ' 4 8 hutch-bench
	summary '^\| R[0-9]+\. ' 6 8 runtime
	summary '^\| (Cold build|Fully cached)' 4 6 build
	summary '^\| (1|1b|2|3)\. ' 6 0 hutch-bench ": raw runsc (floor)"
	summary '^\| R[0-9]+\. ' 4 0 runtime ": on the host (no runsc; shows the noise)"
	echo
	echo "The first rows are ours (\`hutch\`) and the sandbox's; the last rows the floors"
	echo "the ratios divide by, old against new as well."
	for side in old new; do
		if [[ $side == old ]]; then v=$OLD_VERSION r=$OLD_RUNSC; else v=$NEW_VERSION r=$NEW_RUNSC; fi
		echo
		echo "## ${side^} runsc: $v (\`$r\`)"
		echo
		echo "### hutch-bench (figures 1, 1b, 2, 3 against raw runsc; memory)"
		echo
		demote "$OUT/hutch-bench.$side.md"
		echo
		echo "### hutch-bench-runtime (workloads in a sandbox against the host)"
		echo
		demote "$OUT/runtime.$side.md"
		echo
		echo "### hutch-bench-build (Debian + python Dockerfile against buildah)"
		echo
		demote "$OUT/build.$side.md"
	done
} >"$REPORT"
log "report: $REPORT (runs' output and logs in $OUT)"
