#!/usr/bin/env bash
# Written by `demix train command`: one trainer run per line.
set -euo pipefail
# component-general
torchrun --nproc_per_node 8 pretrain_gpt.py --data-args-path <RUN>/train_commands/component-general.txt --split 100,0,0 --train-samples $(( (5120 + 32 - 1) / 32 )) --seed 0 --lr 0.003 --global-batch-size 8 --seq-length 32 --load <RUN>/models/base --save <RUN>/models/_trainer_output/component-general --wandb-exp-name component-general && python tools/checkpoint/convert.py --load <RUN>/models/_trainer_output/component-general --save-hf <RUN>/models/components/general
# component-math
torchrun --nproc_per_node 8 pretrain_gpt.py --data-args-path <RUN>/train_commands/component-math.txt --split 100,0,0 --train-samples $(( (5120 + 32 - 1) / 32 )) --seed 0 --lr 0.003 --global-batch-size 8 --seq-length 32 --load <RUN>/models/base --save <RUN>/models/_trainer_output/component-math --wandb-exp-name component-math && python tools/checkpoint/convert.py --load <RUN>/models/_trainer_output/component-math --save-hf <RUN>/models/components/math
# component-code
torchrun --nproc_per_node 8 pretrain_gpt.py --data-args-path <RUN>/train_commands/component-code.txt --split 100,0,0 --train-samples $(( (5120 + 32 - 1) / 32 )) --seed 0 --lr 0.003 --global-batch-size 8 --seq-length 32 --load <RUN>/models/base --save <RUN>/models/_trainer_output/component-code --wandb-exp-name component-code && python tools/checkpoint/convert.py --load <RUN>/models/_trainer_output/component-code --save-hf <RUN>/models/components/code
# reference-498a712db61faf79
torchrun --nproc_per_node 8 pretrain_gpt.py --data-args-path <RUN>/train_commands/reference-498a712db61faf79.txt --split 100,0,0 --train-samples $(( (2560 + 32 - 1) / 32 )) --seed 0 --lr 0.003 --global-batch-size 8 --seq-length 32 --load <RUN>/models/base --save <RUN>/models/_trainer_output/reference-498a712db61faf79 --wandb-exp-name reference-498a712db61faf79 && python tools/checkpoint/convert.py --load <RUN>/models/_trainer_output/reference-498a712db61faf79 --save-hf <RUN>/models/references/498a712db61faf79
