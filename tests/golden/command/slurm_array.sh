#!/usr/bin/env bash
#SBATCH --job-name=demix-demix-run
#SBATCH --array=0-3
#SBATCH --output=<RUN>/logs/slurm-%A_%a.out
#SBATCH --gpus-per-node=8
#SBATCH --time=24:00:00
# Written by `demix train command`; after the jobs finish, register the checkpoints with
#   demix train command <RUN>/config.yaml --register
set -euo pipefail
case "$SLURM_ARRAY_TASK_ID" in
  0)  # component-general
    torchrun --nproc_per_node 8 pretrain_gpt.py --data-args-path <RUN>/train_commands/component-general.txt --split 100,0,0 --train-samples $(( (5120 + 32 - 1) / 32 )) --seed 0 --lr 0.003 --global-batch-size 8 --seq-length 32 --load <RUN>/models/base --save <RUN>/models/_trainer_output/component-general --wandb-exp-name component-general && python tools/checkpoint/convert.py --load <RUN>/models/_trainer_output/component-general --save-hf <RUN>/models/components/general
    ;;
  1)  # component-math
    torchrun --nproc_per_node 8 pretrain_gpt.py --data-args-path <RUN>/train_commands/component-math.txt --split 100,0,0 --train-samples $(( (5120 + 32 - 1) / 32 )) --seed 0 --lr 0.003 --global-batch-size 8 --seq-length 32 --load <RUN>/models/base --save <RUN>/models/_trainer_output/component-math --wandb-exp-name component-math && python tools/checkpoint/convert.py --load <RUN>/models/_trainer_output/component-math --save-hf <RUN>/models/components/math
    ;;
  2)  # component-code
    torchrun --nproc_per_node 8 pretrain_gpt.py --data-args-path <RUN>/train_commands/component-code.txt --split 100,0,0 --train-samples $(( (5120 + 32 - 1) / 32 )) --seed 0 --lr 0.003 --global-batch-size 8 --seq-length 32 --load <RUN>/models/base --save <RUN>/models/_trainer_output/component-code --wandb-exp-name component-code && python tools/checkpoint/convert.py --load <RUN>/models/_trainer_output/component-code --save-hf <RUN>/models/components/code
    ;;
  3)  # reference-498a712db61faf79
    torchrun --nproc_per_node 8 pretrain_gpt.py --data-args-path <RUN>/train_commands/reference-498a712db61faf79.txt --split 100,0,0 --train-samples $(( (2560 + 32 - 1) / 32 )) --seed 0 --lr 0.003 --global-batch-size 8 --seq-length 32 --load <RUN>/models/base --save <RUN>/models/_trainer_output/reference-498a712db61faf79 --wandb-exp-name reference-498a712db61faf79 && python tools/checkpoint/convert.py --load <RUN>/models/_trainer_output/reference-498a712db61faf79 --save-hf <RUN>/models/references/498a712db61faf79
    ;;
  *) echo "no run for array task $SLURM_ARRAY_TASK_ID" >&2; exit 1 ;;
esac
