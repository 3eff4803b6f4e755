"""Per-dataset settings shared by all methods (data, model, schedule). Methods change what differs.

- voc: DeepLab-v2 ResNet-101 from ImageNet, crop 321, scale 0.5-1.5, batch 10, 20k iterations
  (Hung et al. 2018 Sec. 4.1).
- cityscapes: the same network on 512x1024 images (half resolution), crop 512, sliding-window eval.
- camvid: a CPU-sized setting from ImageNet (benchmarks/RESULTS.md): DeepLab-v3+ (128-wide head)
  on EfficientNet-Lite0 at output stride 16, images at 0.75 x (270x360), crop 224, split 1/16
  (23 labeled images), 3000 iterations (35-50 minutes per SupOnly fit on 2 AVX-512 cores in
  bfloat16). Chosen by measurement on val: at half resolution the same network scored 42.6
  (lr 0.005) and 38.2 (lr 0.001), at 0.75 x 51.3; at 3000 iterations full labels beat 1/16 by
  7.8 points (RESULTS.md, "How the CamVid setting was chosen").
- camvid:tiny (`--dataset=camvid --backbone=tiny`): the earlier from-scratch setting: half
  resolution (180x240), crop 160, DeepLab-v2 on the `tiny` ResNet, 2000 iterations.

A key `<dataset>:<backbone>` is a variant of the dataset's setting that `--backbone` selects.
- synthetic: the built-in dataset at 64x64, DeepLab-v3+ (64-wide head, ASPP rates 1-3: the 8x8
  features need no wider) on the `tiny` ResNet at output stride 8, 3000 iterations: the README
  quickstart, about 2 minutes on 2 cores. The v3+ decoder (stride 4) matters here: with
  DeepLab-v2's stride-8 logits the same run reaches about 49 mIoU at full labels, with it 63.
- synthetic:efficientnet_lite0 (`--dataset=synthetic --backbone=efficientnet_lite0`): the same data and
  schedule from ImageNet, at CamVid's learning rates, to tell what the from-scratch start does to a method.
"""

DATASETS = {
    "voc": dict(
        split="1464", crop_size=321, scale_range=(0.5, 1.5), batch_size=10, eval_batch_size=1,
        arch="deeplabv2", backbone="resnet101", output_stride=8, backbone_weights="imagenet", freeze_bn=True,
        iterations=20000, steps_per_epoch=1000, lr=2.5e-4, weight_decay=5e-4, head_lr_mult=10.0,
        weight_decay_in_gradient=True,  # the papers' SGD (PyTorch / Caffe), tfsemiseg/optim.py
    ),
    "cityscapes": dict(
        split="1_8", image_scale=0.5, crop_size=512, scale_range=(0.5, 1.5), batch_size=8, eval_batch_size=1,
        eval_window=512, arch="deeplabv2", backbone="resnet101", output_stride=8, backbone_weights="imagenet",
        freeze_bn=True, iterations=20000, steps_per_epoch=1000, lr=2.5e-4, weight_decay=5e-4,
        weight_decay_in_gradient=True,
    ),
    "camvid": dict(
        split="1_16", image_scale=0.75, crop_size=224, scale_range=(0.75, 1.5), batch_size=8, eval_batch_size=4,
        ignore_value=11, arch="deeplabv3plus", backbone="efficientnet_lite0", backbone_weights="imagenet",
        output_stride=16, aspp_rates=(6, 12, 18), head_channels=128,
        iterations=3000, steps_per_epoch=200, lr=0.005, weight_decay=1e-4, head_lr_mult=10.0,
    ),
    "camvid:tiny": dict(
        split="1_8", image_scale=0.5, crop_size=160, scale_range=(0.75, 1.5), batch_size=8, eval_batch_size=4,
        ignore_value=11, arch="deeplabv2", backbone="tiny", output_stride=8, aspp_rates=(2, 4, 6, 8),
        iterations=2000, steps_per_epoch=200, lr=0.01, weight_decay=1e-4, head_lr_mult=1.0,
    ),
    "folder": dict(
        split="full", crop_size=321, scale_range=(0.5, 1.5), batch_size=8, eval_batch_size=1,
        arch="deeplabv3plus", backbone="resnet50", output_stride=16, backbone_weights="imagenet",
        iterations=20000, steps_per_epoch=1000, lr=0.001, weight_decay=1e-4,
    ),
    "synthetic": dict(
        split="1_16", image_size=64, crop_size=64, scale_range=(0.75, 1.5), batch_size=8, eval_batch_size=32,
        arch="deeplabv3plus", backbone="tiny", output_stride=8, aspp_rates=(1, 2, 3), head_channels=64,
        iterations=3000, steps_per_epoch=500, lr=0.02, weight_decay=1e-4, head_lr_mult=1.0,
    ),
    "synthetic:efficientnet_lite0": dict(
        split="1_16", image_size=64, crop_size=64, scale_range=(0.75, 1.5), batch_size=8, eval_batch_size=32,
        arch="deeplabv3plus", backbone="efficientnet_lite0", backbone_weights="imagenet", output_stride=8,
        aspp_rates=(1, 2, 3), head_channels=64,
        iterations=3000, steps_per_epoch=500, lr=0.005, weight_decay=1e-4, head_lr_mult=10.0,
    ),
}
