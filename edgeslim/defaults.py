"""Defaults that several parts share: the command line shows them, the configuration
dataclasses start from them, and benchmarks reproduce a search with them. No imports, so the
command line's help costs nothing."""

# Fine-tuning starts from trained weights, so its peak learning rate is a quarter of the base
# recipe's (a tenth, or four times more, recovered less: benchmarks/results/recovery.md).
FINETUNE_LR = 0.05
# Distillation from the base model, weighted 0.9 on its soft targets: 0.6 points more than
# the even weighting of Hinton et al. after a one-epoch fine-tune (same table).
FINETUNE_DISTILL_ALPHA = 0.9
# The largest fraction of a group's channels a candidate may remove.
MAX_RATIO = 0.8
# What a search compresses and how, unless told otherwise.
MODEL = "resnet20"
DATASET = "digits"
TRIALS = 20
STAGES = ("prune", "cluster", "quantize")  # the search tries every buildable order of these
ROUND_TO = 8  # kept channel counts are multiples of this
CLUSTER_COUNTS = (8, 16, 32, 64, 256)  # shared weight values a layer may keep
CLUSTER_METHODS = ("kmeans",)
SPARSITY = (0.3, 0.9)  # the range of unstructured sparsity searched
