"""ST (Yang et al., CVPR 2022): the paper's settings, from the official code (ST-PlusPlus main.py).

VOC: DeepLab-v3+ ResNet-101 at output stride 8 (ASPP 12/24/36), ImageNet backbone, BatchNorm
trained; images resized to a long side of [0.5, 2] x 400, crop 321, batch 16, SGD lr
0.001 x batch/16 with poly decay, head 10x, weight decay 1e-4, 80 epochs per stage.
Cityscapes: the same network, long side [0.5, 2] x 2048, crop 721, lr 0.004 x batch/16, 240
epochs per stage, whole-image evaluation. Every training stage runs `stage_epochs` over its own
image list, so students train far longer than the teacher, as in the paper.

CPU-sized CamVid and synthetic settings keep their dataset base (configs/datasets.py): the
teacher is exactly the SupOnly baseline (`--set teacher=<SupOnly run>` reuses one), and each
student trains as many epochs over its labeled + pseudo-labeled list as the teacher over its
labeled list, the paper's ratio (CamVid 1/8: 2.8x the teacher's iterations for the last student;
synthetic 1/16: 4.3x).
"""

_PAPER = dict(arch="deeplabv3plus", backbone="resnet101", output_stride=8, aspp_rates=(), backbone_weights="imagenet",
              freeze_bn=False, crop_size=321, base_size=400, scale_range=(0.5, 2.0), batch_size=16,
              eval_batch_size=1, lr=0.001 * 16 / 16, momentum=0.9, weight_decay=1e-4, head_lr_mult=10.0,
              stage_epochs=80)

SETTINGS = {
    "voc": _PAPER,
    "cityscapes": dict(_PAPER, image_scale=1.0, eval_window=0, crop_size=721, base_size=2048,
                       lr=0.004 * 16 / 16, stage_epochs=240),
    "folder": dict(_PAPER, backbone="resnet50"),
    # The earlier from-scratch setting (its records used a fixed student length).
    "camvid:tiny": dict(student_iterations=3000),
}
