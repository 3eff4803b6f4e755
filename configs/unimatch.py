"""UniMatch (Yang et al., CVPR 2023): the official configs (../shared/docs/st_plusplus_unimatch.md, section 2).

VOC: DeepLab-v3+ on ResNet-101 from ImageNet at output stride 16, ASPP 6/12/18, crop 321, scale
0.5-2 of the image's own size, SGD lr 0.001 (momentum 0.9, weight decay 1e-4 in the gradient, poly
decay), head 10x, 8 labeled + 8 unlabeled images per step (the paper's 4 GPUs x 2 + 2), 80 epochs
of the unlabeled list / 8: 91,200 iterations at the default 1464 split (9,118 unlabeled images;
other splits: --iterations=80 x unlabeled / 8). tau 0.95, plain cross-entropy.
Cityscapes: whole-resolution crops of 801 (sliding-window evaluation, window 801), lr 0.005, head
1x, 240 epochs (78,000 iterations at 1/8), tau 0 with OHEM (0.7, 200000).
CamVid and synthetic keep their dataset settings, so UniMatch is compared with every method at
SupOnly's labeled-batch budget, with the unsupervised losses from step 0 as the paper
(`semi_start` delays them; a delay to 25 % of training did not help FixMatch on the synthetic
set, benchmarks/RESULTS.md). CamVid, street scenes like Cityscapes, takes Cityscapes' tau 0 (every
pixel's hard pseudo-label) but not its OHEM, which would change the supervised loss SupOnly is
compared on. So does the synthetic set, measured on its val at seeds 0-2 (benchmarks/RESULTS.md):
at tau 0.95 the confident pixels are mostly background, and UniMatch scored 39.8 +- 2.3 (FixMatch
30.0 +- 5.3) against SupOnly's 40.9 +- 3.2; at tau 0, 44.4 +- 1.4 (FixMatch 35.9 +- 1.8). The
method's defaults (tau 0.95, no OHEM) are in `tfsemiseg.config.Config`; its head has no dropout
(`tfsemiseg/methods/unimatch.py`).
"""

_VOC = dict(arch="deeplabv3plus", backbone="resnet101", output_stride=16, aspp_rates=(6, 12, 18),
            backbone_weights="imagenet", freeze_bn=False, crop_size=321, scale_range=(0.5, 2.0), batch_size=8,
            lr=0.001, momentum=0.9, weight_decay=1e-4, weight_decay_in_gradient=True, head_lr_mult=10.0,
            iterations=91200, steps_per_epoch=1140)

SETTINGS = {
    "voc": _VOC,
    "cityscapes": dict(_VOC, image_scale=1.0, crop_size=801, eval_window=801, lr=0.005, head_lr_mult=1.0,
                       iterations=78000, steps_per_epoch=325, tau=0.0, ohem=True),
    "folder": dict(_VOC, backbone="resnet50", iterations=20000, steps_per_epoch=1000),
    "camvid": dict(tau=0.0),
    "synthetic": dict(tau=0.0),
}
