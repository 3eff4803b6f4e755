import json

import pytest

import configs
from tfsemiseg.config import Config
from tfsemiseg.methods import AdvSemiSeg


def test_paper_settings_and_overrides():
    cfg = configs.get_config("suponly", "voc")
    assert (cfg.arch, cfg.backbone, cfg.crop_size, cfg.batch_size, cfg.split) == ("deeplabv2", "resnet101", 321, 10, "1464")
    cfg = cfg.override(["lr=0.01", "scale_range=0.75,1.25", "freeze_bn=false", "iterations=7"])
    assert cfg.lr == 0.01 and cfg.scale_range == (0.75, 1.25) and cfg.freeze_bn is False and cfg.iterations == 7
    cfg = configs.get_config("alss", "voc").override(["class_names=sky,road", "d_lr=1e-5", "aspp_rates=2,4"])
    assert cfg.class_names == ("sky", "road") and cfg.d_lr == 1e-5 and cfg.aspp_rates == (2, 4)


def test_bad_overrides_name_the_problem():
    cfg = Config()
    with pytest.raises(ValueError, match="--set lamda_adv: not a setting of --method=suponly"):
        cfg.override(["lamda_adv=1"])
    with pytest.raises(ValueError, match="Unknown config field.*lamda_adv.*Shared settings: .*arch"):
        cfg.replace(lamda_adv=1)
    with pytest.raises(ValueError, match="iterations=ten"):
        cfg.override(["iterations=ten"])
    with pytest.raises(ValueError, match="Unknown --method"):
        configs.get_config("nope", "voc")


def test_json_round_trip():
    cfg = configs.get_config("suponly", "camvid")
    assert Config.from_json(cfg.to_json()) == cfg


def test_camvid_is_pretrained_and_the_from_scratch_setting_is_reachable():
    cfg = configs.get_config("suponly", "camvid")
    assert (cfg.backbone, cfg.backbone_weights, cfg.arch, cfg.output_stride) == (
        "efficientnet_lite0", "imagenet", "deeplabv3plus", 16)
    scratch = configs.get_config("alss", "camvid", backbone="tiny")
    assert (scratch.backbone, scratch.backbone_weights, scratch.image_scale, scratch.iterations) == ("tiny", "", 0.5, 2000)
    assert scratch.d_lr == 1e-5 and configs.get_config("alss", "camvid").d_lr == 1e-4  # the paper's D lr
    assert configs.get_config("st", "camvid", backbone="tiny").student_iterations == 3000
    assert configs.get_config("suponly", "voc", backbone="tiny").backbone == "resnet101"  # no variant: the base
    with pytest.raises(ValueError, match="Unknown --dataset='camvid:tiny'"):
        configs.get_config("suponly", "camvid:tiny")


def test_the_synthetic_set_from_imagenet_keeps_its_data_and_its_methods_settings():
    base = configs.get_config("fixmatch", "synthetic")
    imagenet = configs.get_config("fixmatch", "synthetic", backbone="efficientnet_lite0")
    assert (imagenet.backbone, imagenet.backbone_weights, imagenet.head_lr_mult) == ("efficientnet_lite0", "imagenet", 10.0)
    same = ("split", "image_size", "crop_size", "batch_size", "iterations", "steps_per_epoch", "arch", "output_stride")
    assert [getattr(imagenet, k) for k in same] == [getattr(base, k) for k in same]
    assert imagenet.params == base.params  # the method's synthetic settings carry over


def test_a_method_owns_its_hyperparameters():
    alss = configs.get_config("alss", "camvid")
    saved = json.loads(alss.to_json())
    assert "d_lr" in saved and "lambda_u" not in saved and "tta_scales" not in saved  # its own and the shared
    assert Config.from_json(alss.to_json()) == alss
    with pytest.raises(ValueError, match=r"--set lambda_u: not a setting of --method=alss \(its own settings: "
                                         r"lambda_adv, .*d_beta_2; shared: "):
        alss.override(["lambda_u=2"])
    assert alss.params == {**AdvSemiSeg.hyperparameters, "semi_start": 750}  # declared by the method, set per dataset
    assert alss.override(["lambda_adv=0.02"]).lambda_adv == 0.02 and alss.lambda_adv == 0.01
    with pytest.raises(AttributeError, match="no setting 'lambda_u'"):
        alss.lambda_u
    assert configs.get_config("stpp", "camvid").override(["reliable_fraction=0.3"]).reliable_fraction == 0.3


def test_street_scenes_and_the_synthetic_set_take_unimatchs_cityscapes_threshold():
    for method in ("unimatch", "fixmatch"):  # FixMatch is UniMatch's baseline, on its configs
        assert configs.get_config(method, "cityscapes").tau == 0.0
        assert configs.get_config(method, "camvid").tau == 0.0
        assert configs.get_config(method, "synthetic").tau == 0.0  # measured: benchmarks/RESULTS.md
        assert configs.get_config(method, "voc").tau == 0.95
        assert configs.get_config(method, "camvid").ohem is False  # SupOnly's supervised loss, unchanged
