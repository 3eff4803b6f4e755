import json
import os

import configs
from tfsemiseg import runner
from tfsemiseg.methods import METHODS, SupOnly, describe, register


def test_a_new_method_is_one_registered_class_with_its_own_settings(tmp_path):
    """The method contract: a class registered by name, with its hyperparameters beside it, is
    listed, configured (no configs/ file needed), trained by runner.train through its `run`, and its
    settings are recorded in config.json; nothing else is edited."""

    @register("toy")
    class Toy(SupOnly):
        description = "Toy: SupOnly under another name, for this test."  # else its module's first line
        hyperparameters = {"toy_weight": 0.5}

    try:
        assert METHODS["toy"] is Toy and describe(Toy) == "Toy: SupOnly under another name, for this test"
        cfg = configs.get_config("toy", "synthetic")
        assert cfg.toy_weight == 0.5 and cfg.override(["toy_weight=2"]).toy_weight == 2.0
        cfg = cfg.replace(workdir=str(tmp_path / "run"), iterations=2, steps_per_epoch=2, crop_size=32, batch_size=2)
        metrics = runner.train(cfg, verbose=0)
        assert metrics["method"] == "toy" and metrics["steps"] == 2
        saved = json.load(open(os.path.join(cfg.workdir, "config.json")))
        assert saved["toy_weight"] == 0.5 and saved["method"] == "toy"
        assert runner.load_run(cfg.workdir)[0].toy_weight == 0.5
    finally:
        METHODS.pop("toy")


def test_every_registered_method_has_a_description_and_settings_for_every_dataset():
    from configs import datasets

    assert list(METHODS)[0] == "suponly"
    for name, cls in METHODS.items():
        assert describe(cls) and "\n" not in describe(cls)
        for dataset in (d for d in datasets.DATASETS if ":" not in d):
            cfg = configs.get_config(name, dataset)
            assert cfg.params.keys() == cls.hyperparameters.keys()
