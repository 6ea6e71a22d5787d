# Shared by leaderboards/run_grid.sh, leaderboards/inreach/run.sh and leaderboards/decisions/run.sh (sourced, not
# run): their LINES run in LANES processes. Each line is "DATA SEEDS METHODS OVERRIDES...", DATA one of SYN, MTD,
# MVT, SCR (the arrays of dataset overrides the sourcing script defines), lines FIRST..LAST; odd lanes take each
# sweep's seeds and methods in reverse, so two lanes meet in the middle (run claims keep them from running one run
# twice). ONLY (optional, comma-separated method names) restricts every line to those methods; EXTRA (optional,
# space-separated overrides, e.g. "device=cuda threads=8") is added after every line's own overrides.

lane() {  # lane index, sweep name
  local i=$1 name=$2 n extra=()
  read -r -a extra <<< "${EXTRA:-}"
  for (( n=FIRST; n<=LAST; n++ )); do
    read -r -a words <<< "${LINES[n]}"
    local data=("${MTD[@]}") seeds=${words[1]} methods=${words[2]}
    [[ ${words[0]} == SYN ]] && data=("${SYN[@]}")
    [[ ${words[0]} == MVT ]] && data=("${MVT[@]}")
    [[ ${words[0]} == SCR ]] && data=("${SCR[@]}")
    if [[ -n ${ONLY:-} ]]; then
      methods=$(tr ',' '\n' <<< "$methods" | grep -Fxf <(tr ',' '\n' <<< "$ONLY") | paste -sd,) || true
      [[ -n $methods ]] || continue
    fi
    if (( i % 2 )); then
      seeds=$(tr ',' '\n' <<< "$seeds" | tac | paste -sd,)
      methods=$(tr ',' '\n' <<< "$methods" | tac | paste -sd,)
    fi
    oadbench run -m "${COMMON[@]}" "${data[@]}" "${words[@]:3}" "${extra[@]}" "method=$methods" "seed=$seeds" \
      "hydra.sweep.dir=${TMPDIR:-/tmp}/oadbench-$name/lane$i" || echo "lane $i: a sweep reported failures: ${LINES[n]}" >&2
  done
}

run_lanes() {  # sweep name: LANES lanes in the background, each logging to $TMPDIR/oadbench-<name>-lane<i>.log
  local l
  for (( l=0; l<LANES; l++ )); do lane "$l" "$1" > "${TMPDIR:-/tmp}/oadbench-$1-lane$l.log" 2>&1 & done
  wait
}
