#!/usr/bin/env bash
# Run on every worker of a TPU VM pod slice. jax.distributed.initialize() finds the other
# workers by itself on TPU VMs, so every worker runs the same command.
#   TPU_NAME=my-v5e-32 ZONE=us-west4-a WORKDIR=/mnt/shared/inat \
#       launch/tpu_pod.sh --config=configs/inat.py
# Any config runs this way, RetLLM too (each worker scores its own chunks of queries):
#   TPU_NAME=my-v5e-32 ZONE=us-west4-a WORKDIR=/mnt/shared/retllm \
#       launch/tpu_pod.sh --config=configs/retllm_flickr30k.py \
#       --config.clip.path=/mnt/shared/clip-b16 --config.retllm.model_path=/mnt/shared/qwen7b \
#       --config.retllm.karpathy_json=/mnt/shared/dataset_flickr30k.json \
#       --config.retllm.data_dir=/mnt/shared/flickr30k-images
# WORKDIR must be on storage every worker sees (Filestore/NFS, or a gcsfuse mount): the
# embedding store and the index are memory-mapped from it; checkpoints go there too.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${WORKDIR:?set WORKDIR}"
REPO_DIR="${REPO_DIR:-~/retformer_jax}"
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}
args=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG --worker=all --command "
  set -eo pipefail  # exit 75 = preempted (saved): rerun the same command to resume
  cd $REPO_DIR
  if [ ! -f .installed ]; then pip install -q -e '.[tpu]' && touch .installed; fi
  python -m retformer_jax.main $args --workdir=$WORKDIR 2>&1 | tee -a /tmp/retformer_\$(hostname).log
"
