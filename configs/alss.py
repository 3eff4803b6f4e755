"""ALSS / AdvSemiSeg (Hung et al., BMVC 2018): loss weights and schedule.

The dataset bases (configs/datasets.py) already hold the paper's VOC and Cityscapes settings
(DeepLab-v2 ResNet-101, SGD lr 2.5e-4 with poly decay, head 10x, batch 10, crop 321, 20k
iterations). The method's own defaults are in `tfsemiseg.config.Config`: lambda_adv 0.01,
lambda_semi_adv 0.001, lambda_semi 0.1, T_semi 0.2, semi_start 5000, discriminator Adam
lr 1e-4, betas (0.9, 0.99). Shorter schedules start the semi loss at the same fraction
(25 %) of training. On the synthetic dataset ALSS trains SupOnly's 3000 iterations (the same
labeled-batch budget as every method).
"""

SETTINGS = {
    "voc": dict(semi_start=5000),
    "cityscapes": dict(semi_start=5000),
    # CPU-sized from ImageNet: the paper's D learning rate (1e-4); semi loss from 25 % of training.
    "camvid": dict(semi_start=750),
    # CPU-sized, from scratch: the paper's D (lr 1e-4) wins outright and its confidence map
    # starves the semi loss; a 10x slower D keeps it informative (benchmarks/RESULTS.md).
    "camvid:tiny": dict(semi_start=500, d_lr=1e-5),
    "folder": dict(semi_start=5000),
    "synthetic": dict(semi_start=750),
}
