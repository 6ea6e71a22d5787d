#!/usr/bin/env bash
# Re-runs the published results (third edition): the 128 px protocol grid into leaderboards/records and the two
# 256 px headline tables into leaderboards/headline/records. Finished runs are skipped, so it resumes.
#
#   MTD_ROOT=<Magnetic Tile Defects> MVTEC_ROOT=<MVTec AD> [ONLY=padim,lemo,...] leaderboards/run_grid.sh [LANES] [PART]
#
# LANES (default 2) processes share every sweep through run claims (see leaderboards/lanes.sh), one torch thread
# each. PART (default all): `grid` (the four methods' grid cells), `headline` (both headline tables, all five
# methods), `inreach` (InReaCh's lines of both), or `all`, which runs the lines in the order below: the four methods'
# grid cells, their headline cells, then InReaCh's grid cells and its headline cells. ONLY restricts every line to
# some methods; EXTRA (space-separated overrides) is added to every line, e.g. InReaCh's 256 px headline cells on a
# GPU (about 80 CPU-hours on one thread, README "Published results"):
#   ONLY=inreach EXTRA="device=cuda threads=8" leaderboards/run_grid.sh 1 headline
# Grid reductions (stated in every record's config): 128 px input, the checkpoint schedules below, CFA's offline
# form trained for 10 epochs instead of 30 on full training splits, InReaCh's memory on MTD capped at 100,000
# members (method.max_members; its default 2,000,000 holds every patch of 1,953 images at 128 px, and the kNN cost
# grows with the members). Headline: 256 px, the cold-start table (and its smoke-test table on the synthetic
# categories) with the log2 checkpoint schedule (0, 1, 2, 4, ... and the stream's end; the final value does not
# depend on the schedule), every record with its per-image results.
# Everything: W&B disabled. Then: `oadbench leaderboard && oadbench figs`.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${MTD_ROOT:?set MTD_ROOT to the Magnetic Tile Defects folder}"
: "${MVTEC_ROOT:?set MVTEC_ROOT to the MVTec AD folder (transistor and screw)}"
LANES=${1:-2}
PART=${2:-all}
[[ $PART =~ ^(all|grid|headline|inreach)$ ]] || { echo "PART must be all, grid, headline or inreach, got '$PART'" >&2; exit 2; }

COMMON=(threads=1 wandb.mode=disabled progress=false)
SYN=(dataset=synthetic dataset.root=.cache/synthetic dataset.category=all)
MTD=(dataset=mtd "dataset.root=$MTD_ROOT")
MVT=(dataset=mvtec "dataset.root=$MVTEC_ROOT" dataset.category=transistor)
SCR=(dataset=mvtec "dataset.root=$MVTEC_ROOT" dataset.category=screw)
FOUR=padim,patchcore,cfa,lemo
G="image_size=128 results_dir=leaderboards/records"
H="image_size=256 results_dir=leaderboards/headline/records"
SYN_CK='protocol.evaluation.checkpoints=[0,1,2,5,10,20,50]'
MTD_CK='protocol.evaluation.checkpoints=[0,5,20,50,200]'  # also MVTec AD transistor's and screw's
LOG2=protocol.evaluation.checkpoints=log2
OTS=protocol.evaluation.order=observe_then_score
SMALL=method.max_members=100000

# the grid's cells for one data set: key, checkpoint override, methods, overrides of the online lines
cells() {
  local d=$1 ck=$2 m=$3 x=${4:-} rest
  rest=$(tr ',' '\n' <<< "$m" | grep -vx cfa | paste -sd,) || true
  echo "$d 0,1,2 $m protocol=online_cold_start $ck $G $x"
  echo "$d 0,1,2 $m protocol=online_contaminated $ck $G $x"
  echo "$d 0,1,2 $m protocol=online_prequential $G $x"
  [[ $m == *cfa* ]] && echo "$d 0,1,2 cfa protocol=offline method.epochs=10 $G"
  [[ -n $rest ]] && echo "$d 0,1,2 $rest protocol=offline $G"
  echo "$d 0,1,2 $m protocol=few_shot protocol.warmup.k=1,2,4,8 $G"
  echo "$d 0,1,2 $m protocol=online_drift $ck $G $x"
  [[ $m == *cfa* ]] && echo "$d 0,1,2 cfa protocol=offline_drift method.epochs=10 $G"
  [[ -n $rest ]] && echo "$d 0,1,2 $rest protocol=offline_drift $G"
  true
}
headline() {  # methods, extra overrides
  local d
  for d in MVT SCR MTD; do echo "$d 0,1,2 $1 protocol=online_prequential $H ${2:-}"; done
  for d in MVT SCR MTD; do echo "$d 0,1,2 $1 protocol=online_prequential $OTS $H ${2:-}"; done
  for d in MVT SCR MTD; do echo "$d 0,1,2 $1 protocol=online_cold_start $LOG2 $H ${2:-}"; done
  echo "SYN 0,1,2 $1 protocol=online_cold_start $LOG2 $H ${2:-}"  # the smoke-test table (synthetic categories)
}

GRID=() HEAD=() INREACH_GRID=() INREACH_HEAD=()
mapfile -t GRID < <(cells SCR "$MTD_CK" $FOUR; cells MVT "$MTD_CK" $FOUR; cells MTD "$MTD_CK" $FOUR
                    cells SYN "$SYN_CK" $FOUR
                    echo "MTD 0,1,2 $FOUR protocol=online_contaminated protocol.stream.contamination=0.0,0.05,0.2,0.3 protocol.evaluation.checkpoints=[] $G")
mapfile -t HEAD < <(headline $FOUR)
mapfile -t INREACH_GRID < <(cells MVT "$MTD_CK" inreach; cells SCR "$MTD_CK" inreach; cells SYN "$SYN_CK" inreach
                            cells MTD "$MTD_CK" inreach "$SMALL")
mapfile -t INREACH_HEAD < <(headline inreach)
LINES=()
[[ $PART == all || $PART == grid ]] && LINES+=("${GRID[@]}")
[[ $PART == all || $PART == headline ]] && LINES+=("${HEAD[@]}")
[[ $PART == all || $PART == inreach ]] && LINES+=("${INREACH_GRID[@]}")
[[ $PART != grid ]] && LINES+=("${INREACH_HEAD[@]}")
FIRST=0
LAST=$(( ${#LINES[@]} - 1 ))
if [[ ${DRY_RUN:-} ]]; then printf '%s\n' "${LINES[@]}"; exit 0; fi

source leaderboards/lanes.sh
run_lanes grid
