#!/usr/bin/env bash
# Decisions at stream time (issue 32's measurements), into leaderboards/decisions/records.
#
#   MTD_ROOT=<Magnetic Tile Defects> MVTEC_ROOT=<MVTec AD> leaderboards/decisions/run.sh [LANES] [FIRST] [LAST]
#
# Lines run in the order below, LANES (default 2) processes sharing each sweep through run claims (finished runs
# are skipped, so it resumes); FIRST/LAST (default all) pick lines by their 0-based index. Same reductions as
# leaderboards/run_grid.sh: 128 px, one torch thread per lane, W&B disabled. Every record keeps its per-image
# stream results, which `oadbench decisions` replays policies on. MVTec AD transistor's InReaCh online_prequential
# records (seeds 0-2), screw's (five methods, seed 0), MTD's InReaCh and the synthetic InReaCh seed-0 records are
# read from leaderboards/inreach/records (same configurations); this adds the rest.
#
# Policy selection rule (fixed before any record below was replayed): every policy of POLICIES in
# leaderboards/decisions/measure.py is replayed on every online_prequential record; the default is the policy with
# the highest mean F1 of its rejections over the selection data -- the synthetic categories (their mean counting
# once) and MTD, each method counting once -- ties to the earlier policy in the list. MVTec AD transistor and screw
# are not used to select: their numbers are out-of-sample. Protected learning (lines marked P) then runs with that
# default; its effect is reported on every cell, whichever way it goes.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${MTD_ROOT:?set MTD_ROOT to the Magnetic Tile Defects folder}"
: "${MVTEC_ROOT:?set MVTEC_ROOT to the MVTec AD folder}"
LANES=${1:-2}
COMMON=(threads=1 wandb.mode=disabled progress=false image_size=128 results_dir=leaderboards/decisions/records)
SYN=(dataset=synthetic dataset.root=.cache/synthetic dataset.category=all)
MTD=(dataset=mtd "dataset.root=$MTD_ROOT")
MVT=(dataset=mvtec "dataset.root=$MVTEC_ROOT" dataset.category=transistor)
SCR=(dataset=mvtec "dataset.root=$MVTEC_ROOT" dataset.category=screw)
ALL=padim,patchcore,cfa,lemo,inreach
FOUR=padim,patchcore,cfa,lemo
PREQ=protocol=online_prequential
SMALL=method.max_members=100000  # InReaCh on MTD, as in leaderboards/inreach/run.sh
CONT=protocol=contaminated_prequential  # normal training images with 20 % defects shuffled in, scored as they come
C15=protocol.stream.contamination=0.15  # transistor: 39 streamable defects among 213 normal images allow 15 % at most
PROTECT=protocol.decisions.protect=true

# dataset key, seeds, methods, then overrides.
LINES=(
  "SYN 0,1,2 $FOUR $PREQ"
  "SYN 1,2 inreach $PREQ"
  "MTD 0,1,2 $FOUR $PREQ"
  "SCR 1,2 $ALL $PREQ"
  "MTD 1,2 inreach $PREQ $SMALL"
  "MVT 0,1,2 $FOUR $PREQ"
  # protected learning with the default policy (decisions.DEFAULT_POLICY), seed 0, beside the same streams unprotected
  "MVT 0 $ALL $PREQ $PROTECT"
  "SCR 0 $ALL $PREQ $PROTECT"
  "MTD 0 $FOUR $PREQ $PROTECT"
  "MVT 0 $ALL $CONT $C15"
  "MVT 0 $ALL $CONT $C15 $PROTECT"
  "SCR 0 $ALL $CONT"
  "SCR 0 $ALL $CONT $PROTECT"
  "MTD 0 $FOUR $CONT"
  "MTD 0 $FOUR $CONT $PROTECT"
  "MTD 0 inreach $PREQ $SMALL $PROTECT"
  "MTD 0 inreach $CONT $SMALL"
  "MTD 0 inreach $CONT $SMALL $PROTECT"
)
FIRST=${2:-0}
LAST=${3:-$(( ${#LINES[@]} - 1 ))}

source leaderboards/lanes.sh
run_lanes decisions
