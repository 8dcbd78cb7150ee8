#!/usr/bin/env bash
# Written by `demix train command`: one trainer run per line.
set -euo pipefail
# component-general
torchrun --nproc_per_node 8 pretrain_gpt.py --data-args-path <RUN>/train_commands/component-general.txt --train-tokens 5120 --seed 0 --lr 0.003 --global-batch-size 8 --seq-length 32 --load <RUN>/models/base --save <RUN>/models/_trainer_output/component-general --exp-name component-general && python tools/checkpoint/convert.py --load <RUN>/models/_trainer_output/component-general --save-hf <RUN>/models/components/general
# component-math
torchrun --nproc_per_node 8 pretrain_gpt.py --data-args-path <RUN>/train_commands/component-math.txt --train-tokens 5120 --seed 0 --lr 0.003 --global-batch-size 8 --seq-length 32 --load <RUN>/models/base --save <RUN>/models/_trainer_output/component-math --exp-name component-math && python tools/checkpoint/convert.py --load <RUN>/models/_trainer_output/component-math --save-hf <RUN>/models/components/math
# component-code
torchrun --nproc_per_node 8 pretrain_gpt.py --data-args-path <RUN>/train_commands/component-code.txt --train-tokens 5120 --seed 0 --lr 0.003 --global-batch-size 8 --seq-length 32 --load <RUN>/models/base --save <RUN>/models/_trainer_output/component-code --exp-name component-code && python tools/checkpoint/convert.py --load <RUN>/models/_trainer_output/component-code --save-hf <RUN>/models/components/code
# reference-498a712db61faf79
torchrun --nproc_per_node 8 pretrain_gpt.py --data-args-path <RUN>/train_commands/reference-498a712db61faf79.txt --train-tokens 2560 --seed 0 --lr 0.003 --global-batch-size 8 --seq-length 32 --load <RUN>/models/base --save <RUN>/models/_trainer_output/reference-498a712db61faf79 --exp-name reference-498a712db61faf79 && python tools/checkpoint/convert.py --load <RUN>/models/_trainer_output/reference-498a712db61faf79 --save-hf <RUN>/models/references/498a712db61faf79
