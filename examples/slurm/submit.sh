#!/bin/bash
# Submit the whole method as dependent SLURM jobs:
#   cases (job array over patients) -> prepare (dataset + plans) -> train (one job per fold)
#   -> finish (ensemble prediction + evaluation).
#
#   examples/slurm/submit.sh my.yaml [PARTS]       # PARTS: array size for the per-case stages
#
# Set HNTSEG=/path/to/.venv/bin/hntseg if hntseg is not on the nodes' PATH. Every step is
# resumable: resubmitting skips what is done (see `hntseg run my.yaml --dry-run`).
set -euo pipefail
CONFIG=$(realpath "${1:?usage: submit.sh CONFIG.yaml [PARTS]}")
PARTS=${2:-10}
export HNTSEG_PARTS=$PARTS   # the array's K, also when one part is resubmitted alone
HERE=$(dirname "$(realpath "$0")")
HNTSEG=${HNTSEG:-hntseg}
export HNTSEG
PYTHON=${PYTHON:-$(dirname "$(command -v "$HNTSEG")")/python}   # the venv's python

"$HNTSEG" run "$CONFIG" --dry-run   # fails fast on a config error, shows the plan
FOLDS=$("$PYTHON" -c '
import sys
from hntseg.pipeline import load_config
print(",".join(str(f) for f in load_config(sys.argv[1])["train"]["folds"]))
' "$CONFIG")

cases=$(sbatch --parsable --array=0-$((PARTS - 1)) "$HERE/cases.sbatch" "$CONFIG")
prep=$(sbatch --parsable --dependency=afterok:$cases "$HERE/prepare.sbatch" "$CONFIG")
train=$(sbatch --parsable --dependency=afterok:$prep --array="$FOLDS" "$HERE/train.sbatch" "$CONFIG")
finish=$(sbatch --parsable --dependency=afterok:$train "$HERE/finish.sbatch" "$CONFIG")
echo "submitted: cases $cases -> prepare $prep -> train $train (folds $FOLDS) -> finish $finish"
