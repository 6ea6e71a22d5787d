#!/usr/bin/env bash
# Re-runs the published grid into leaderboards/records (finished runs are skipped, so it resumes).
#
#   MTD_ROOT=<folder of Magnetic Tile Defects> MVTEC_ROOT=<folder of MVTec AD> leaderboards/run_grid.sh [LANES] [PART]
#
# LANES (default 2) processes share the work through run claims: lane i walks the grid in its own order and
# skips any run another lane has claimed or finished. Each lane uses one torch thread.
# METHODS (environment, default padim,patchcore,cfa,lemo) restricts every line to those methods, e.g. to run the
# cheap ones first: METHODS=padim,lemo,patchcore leaderboards/run_grid.sh 2 headline.
# PART (default all): `grid` (the protocol tables, into leaderboards/records), `headline` (online_cold_start at
# 256 px with the protocol's full checkpoint schedule on the four synthetic categories, MTD and MVTec AD
# transistor, into leaderboards/headline/records), or `all`.
# Cost reductions of the grid (stated in every record's config): 128 px input, W&B disabled, evaluation at fewer
# checkpoints, CFA's offline form trained for 10 epochs instead of 30 on full training splits. The headline
# table has none of them but W&B.
# Then: `oadbench leaderboard` and `oadbench figs`.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${MTD_ROOT:?set MTD_ROOT to the Magnetic Tile Defects folder}"
: "${MVTEC_ROOT:?set MVTEC_ROOT to the MVTec AD folder (the grid uses its transistor category)}"
LANES=${1:-2}
PART=${2:-all}
[[ $PART == all || $PART == grid || $PART == headline ]] || { echo "PART must be all, grid or headline, got '$PART'" >&2; exit 2; }

COMMON=(threads=1 wandb.mode=disabled progress=false)
GRID_RUN=(image_size=128 results_dir=leaderboards/records)
HEADLINE_RUN=(image_size=256 results_dir=leaderboards/headline/records)
SYN=(dataset=synthetic dataset.root=.cache/synthetic dataset.category=all)
MTD=(dataset=mtd "dataset.root=$MTD_ROOT")
MVT=(dataset=mvtec "dataset.root=$MVTEC_ROOT" dataset.category=transistor)
ALL=padim,patchcore,cfa,lemo
METHODS=${METHODS:-$ALL}
for m in ${METHODS//,/ }; do
  [[ ,$ALL, == *,$m,* ]] || { echo "METHODS: unknown method '$m' (expected some of $ALL)" >&2; exit 2; }
done
SYN_CK='protocol.evaluation.checkpoints=[0,1,2,5,10,20,50]'
MTD_CK='protocol.evaluation.checkpoints=[0,5,20,50,200]'  # also MVTec AD transistor's

# one sweep per line: dataset key, then overrides (methods and seeds are appended per lane)
HEADLINE=(
  "SYN protocol=online_cold_start"
  "MVT protocol=online_cold_start"
  "MTD protocol=online_cold_start"
)
GRID=(
  "MTD protocol=online_cold_start $MTD_CK"
  "MTD protocol=online_contaminated $MTD_CK"
  "MTD protocol=offline method.epochs=10 @cfa"
  "MTD protocol=offline @padim,patchcore,lemo"
  "MTD protocol=few_shot protocol.warmup.k=1,2,4,8"
  "MTD protocol=online_prequential"
  "MTD protocol=online_contaminated protocol.stream.contamination=0.0,0.05,0.2,0.3 protocol.evaluation.checkpoints=[]"
  "SYN protocol=online_cold_start $SYN_CK"
  "SYN protocol=online_contaminated $SYN_CK"
  "SYN protocol=offline method.epochs=10 @cfa"
  "SYN protocol=offline @padim,patchcore,lemo"
  "SYN protocol=few_shot protocol.warmup.k=1,2,4,8"
  "SYN protocol=online_prequential"
  "MVT protocol=online_cold_start $MTD_CK"
  "MVT protocol=online_contaminated $MTD_CK"
  "MVT protocol=offline method.epochs=10 @cfa"
  "MVT protocol=offline @padim,patchcore,lemo"
  "MVT protocol=few_shot protocol.warmup.k=1,2,4,8"
  "MVT protocol=online_prequential"
  "SYN protocol=online_drift $SYN_CK"
  "SYN protocol=offline_drift method.epochs=10 @cfa"
  "SYN protocol=offline_drift @padim,patchcore,lemo"
  "MTD protocol=online_drift $MTD_CK"
  "MTD protocol=offline_drift method.epochs=10 @cfa"
  "MTD protocol=offline_drift @padim,patchcore,lemo"
  "MVT protocol=online_drift $MTD_CK"
  "MVT protocol=offline_drift method.epochs=10 @cfa"
  "MVT protocol=offline_drift @padim,patchcore,lemo"
)

LINES=()  # "<part> <dataset key> <overrides...>"
[[ $PART == headline ]] || for line in "${GRID[@]}"; do LINES+=("grid $line"); done
[[ $PART == grid ]] || for line in "${HEADLINE[@]}"; do LINES+=("headline $line"); done

lane() {  # lane index: even lanes walk the lines forwards, odd lanes backwards with seeds and methods reversed
  local i=$1 lines=("${LINES[@]}") seeds=0,1,2 n
  if (( i % 2 )); then
    lines=(); for (( n=${#LINES[@]}-1; n>=0; n-- )); do lines+=("${LINES[n]}"); done
    seeds=2,1,0
  fi
  for line in "${lines[@]}"; do
    read -r -a words <<< "$line"
    local run=("${GRID_RUN[@]}")
    [[ ${words[0]} == headline ]] && run=("${HEADLINE_RUN[@]}")
    words=("${words[@]:1}")
    local data=("${MTD[@]}") methods=$ALL args=()
    [[ ${words[0]} == SYN ]] && data=("${SYN[@]}")
    [[ ${words[0]} == MVT ]] && data=("${MVT[@]}")
    for w in "${words[@]:1}"; do
      if [[ $w == @* ]]; then methods=${w#@}; else args+=("$w"); fi
    done
    methods=$(tr ',' '\n' <<< "$methods" | grep -Fxf <(tr ',' '\n' <<< "$METHODS") | paste -sd,) || true
    [[ -n $methods ]] || continue
    (( i % 2 )) && methods=$(tr ',' '\n' <<< "$methods" | tac | paste -sd,)
    oadbench run -m "${COMMON[@]}" "${run[@]}" "${data[@]}" "${args[@]}" "method=$methods" "seed=$seeds" \
      "hydra.sweep.dir=${TMPDIR:-/tmp}/oadbench-grid/lane$i" || echo "lane $i: a sweep reported failures: $line" >&2
  done
}

for (( l=0; l<LANES; l++ )); do lane "$l" > "${TMPDIR:-/tmp}/oadbench-grid-lane$l.log" 2>&1 & done
wait
