"""PseudoSeg (Zou et al., ICLR 2021): settings from the official code (../shared/docs/pseudoseg.md).

VOC: DeepLab-v3+ at output stride 16 (ASPP 6/12/18), here on ResNet-101 from ImageNet (the
paper's Table 1 backbone; its default Xception-65 has no Keras ImageNet checkpoint), crop 513,
scale 0.5-2, SGD momentum 0.9, lr 0.007 with poly decay over 30k iterations, weight decay 1e-4,
labeled : unlabeled batches 1 : 1 (the paper's 64 + 64 over 16 GPUs; 16 + 16 here, set
`--batch_size` to what your devices hold), BatchNorm trained. lambda_u 1, gamma 0.5, T 0.5, SGC
width 128 (Config defaults). No 10x head LR: the official code uses one LR (2x on biases).

CamVid and synthetic keep their dataset settings (the CPU-sized CamVid setting from ImageNet;
the quickstart), so PseudoSeg is compared with the other methods under the same schedule, L_u
from step 0 as the paper (`semi_start` delays it).
"""

_PAPER = dict(arch="deeplabv3plus", backbone="resnet101", output_stride=16, aspp_rates=(6, 12, 18),
              backbone_weights="imagenet", freeze_bn=False, crop_size=513, scale_range=(0.5, 2.0), batch_size=16,
              lr=0.007, momentum=0.9, weight_decay=1e-4, head_lr_mult=1.0, iterations=30000, steps_per_epoch=1000)

SETTINGS = {
    "voc": _PAPER,
    "cityscapes": dict(_PAPER, crop_size=512, eval_window=512),
    "folder": dict(_PAPER, backbone="resnet50"),
}
