"""PaCaViTConfig: field names, validation, official names, serialisation."""

import re

import pytest

from paca_hf import PaCaViTConfig
from paca_hf.configuration_pacavit import OFFICIAL_NAMES


def test_defaults_are_paca_tiny():
    config = PaCaViTConfig()
    assert config.model_type == "pacavit"
    assert config.hidden_sizes == [96, 192, 320, 384]
    assert config.depths == [2, 2, 4, 2]
    assert config.num_clusters == [100, 100, 100, 0]
    assert config.clustering_type == "conv"
    assert config.layer_norm_eps == 1e-6
    assert config.stage_names == ["stage1", "stage2", "stage3", "stage4"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"depths": [2, 2]}, r"`hidden_sizes` has 4 entries but `depths` has 2"),
        ({"num_clusters": [8, 8, 0]}, r"`num_clusters` has 3 entries"),
        ({"mlp_ratios": [4, 4, 4, 4, 4]}, r"`mlp_ratios` has 5 entries"),
        ({"clustering_interval": [0]}, r"`clustering_interval` has 1 entries"),
        ({"clustering_kernel_size": [7, 7]}, r"`clustering_kernel_size` has 2 entries"),
        (
            {"hidden_sizes": [96, 190, 320, 384]},
            r"`hidden_sizes\[1\]` = 190 is not divisible by `num_attention_heads\[1\]` = 4",
        ),
        ({"clustering_type": "kmeans"}, r"`clustering_type` must be one of 'conv', 'mlp', 'linear', got 'kmeans'"),
        ({"num_clusters": [100, -1, 100, 0]}, r"`num_clusters` must be >= 0"),
        ({"teacher_depths": [2, 2, 2]}, r"`teacher_depths` has 3 stages but the model has 4"),
        ({"teacher_depths": [2, 0, 2, 2]}, r"`teacher_depths` must be positive"),
        ({"clustering_interval": [0, -1, 0, 0]}, r"`clustering_interval` must be >= 0"),
        ({"clustering_kernel_size": 4}, r"`clustering_kernel_size` must be a positive odd number"),
        ({"depths": []}, r"`depths` must name at least one stage"),
        ({"depths": [2, 0, 4, 2]}, r"`depths` must be positive"),
        ({"chunk_size_feed_forward": -1}, r"`chunk_size_feed_forward` must be >= 0"),
        ({"drop_path_rate": 1.01}, r"`drop_path_rate` is a probability and must be in \[0, 1\], got 1.01"),
        ({"drop_path_rate": -0.1}, r"`drop_path_rate` is a probability"),
        ({"drop_path_rate": float("nan")}, r"`drop_path_rate` is a probability"),
        ({"hidden_dropout_prob": 1.5}, r"`hidden_dropout_prob` is a probability"),
        ({"attention_probs_dropout_prob": 2}, r"`attention_probs_dropout_prob` is a probability"),
        ({"classifier_dropout_prob": -0.5}, r"`classifier_dropout_prob` is a probability"),
        ({"layer_norm_eps": 0.0}, r"`layer_norm_eps` must be > 0"),
        ({"layer_norm_eps": -1e-6}, r"`layer_norm_eps` must be > 0"),
        ({"mlp_ratios": [4, 4, 0.001, 4]}, r"`mlp_ratios\[2\]` = 0.001 gives"),
        ({"mlp_ratios": [4, 4, 4, -1]}, r"`mlp_ratios` must be positive"),
        ({"hidden_sizes": [96, 192, 0, 384]}, r"`hidden_sizes` must be positive"),
        ({"num_attention_heads": [2, 4, 8, -16]}, r"`num_attention_heads` must be positive"),
        ({"decode_head_hidden_size": 0}, r"`decode_head_hidden_size` must be positive"),
        ({"image_size": 0}, r"`image_size` must be a positive"),
        ({"image_size": [224, -1]}, r"`image_size` must be a positive"),
        ({"num_channels": 0}, r"`num_channels` must be positive"),
        ({"initializer_range": -0.02}, r"`initializer_range` is a standard deviation"),
        ({"cluster_loss_weight": -0.4}, r"`cluster_loss_weight` must be >= 0"),
        ({"hidden_act": "swishy"}, r"`hidden_act` 'swishy'"),
    ],
)
def test_invalid_configs_raise_value_error_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PaCaViTConfig(**kwargs)


def test_any_number_of_stages():
    config = PaCaViTConfig(
        hidden_sizes=[16, 32],
        depths=[1, 1],
        num_attention_heads=[1, 2],
        mlp_ratios=[2, 2],
        num_clusters=[4, 0],
        clustering_interval=[0, 0],
    )
    assert config.stage_names == ["stage1", "stage2"]
    assert config.out_features == ["stage2"]


@pytest.mark.parametrize("name", OFFICIAL_NAMES)
def test_official_names_round_trip_through_json(name, tmp_path):
    config = PaCaViTConfig.from_official_name(name)
    config.save_pretrained(tmp_path)
    loaded = PaCaViTConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()


def test_official_name_details():
    small = PaCaViTConfig.from_official_name("pacavit_small_p2cconv_100_0")
    assert small.depths == [3, 3, 10, 3] and small.num_clusters == [100, 100, 100, 0]
    mlp = PaCaViTConfig.from_official_name("pacavit_small_p2cmlp_100_0")
    assert mlp.clustering_type == "mlp"
    blockwise = PaCaViTConfig.from_official_name("pacavit_small_p2cconv_100_blockwise")
    assert blockwise.clustering_interval == [1, 1, 1, 1]
    teacher = PaCaViTConfig.from_official_name("pacavit_convmixer_base_100")
    assert teacher.teacher_depths == [2, 2, 4, 2] and teacher.hidden_sizes == [96, 192, 384, 512]
    segmentor = PaCaViTConfig.from_official_name("pacahead_pacavit_small_p2cconv_100_0_512x512_160k_ade20k")
    assert segmentor.num_clusters == [200, 200, 200, 0] and segmentor.num_labels == 150
    assert segmentor.decode_head_hidden_size == 256 and segmentor.out_indices == [0, 1, 2, 3]
    overridden = PaCaViTConfig.from_official_name("pacavit_tiny_p2cconv_100_0", drop_path_rate=0.0, num_labels=3)
    assert overridden.drop_path_rate == 0.0
    assert overridden.num_labels == 3 and overridden.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}


def test_backbone_out_features():
    config = PaCaViTConfig(out_features=["stage2", "stage4"])
    assert config.out_indices == [1, 3]
    with pytest.raises(ValueError, match="out_features"):
        PaCaViTConfig(out_features=["stage5"])


def test_clustering_interval_follows_the_number_of_stages():
    """Left out, it is 0 (stage-wise) in every stage, however many there are; an int applies to every stage."""
    two_stages = {
        "hidden_sizes": [16, 32],
        "depths": [1, 1],
        "num_attention_heads": [1, 2],
        "mlp_ratios": [4, 4],
        "num_clusters": [8, 0],
    }
    assert PaCaViTConfig(**two_stages).clustering_interval == [0, 0]
    assert PaCaViTConfig(**two_stages, clustering_interval=1).clustering_interval == [1, 1]
    assert PaCaViTConfig().clustering_interval == [0, 0, 0, 0]
    with pytest.raises(ValueError, match="clustering_interval"):
        PaCaViTConfig(**two_stages, clustering_interval=[0, 0, 0])


def test_probabilities_at_the_ends_of_their_range_are_accepted():
    """0 and 1 are valid probabilities (1: dropout gives zeros, the deepest block's drop path always drops); the
    model's behaviour there is tested in test_modeling_pacavit.py."""
    for name in ("drop_path_rate", "hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout_prob"):
        for value in (0, 1, 0.0, 1.0):
            assert getattr(PaCaViTConfig(**{name: value}), name) == value


def test_the_release_catalogue_gives_the_config_of_each_release():
    """The catalogue (sizes and releases) lives in `paca_hf.releases`; `from_official_name` builds its config."""
    from paca_hf import configuration_pacavit, releases

    release = releases.get_release("upernet_pacavit_small_p2cconv_100_0_512x512_160k_ade20k")
    assert release.label_set is None
    assert release.config_kwargs() == {
        "hidden_sizes": [96, 192, 320, 384],
        "depths": [3, 3, 10, 3],
        "drop_path_rate": 0.1,
        "num_attention_heads": [2, 4, 8, 16],
        "mlp_ratios": [4, 4, 4, 4],
        "num_clusters": [200, 200, 200, 0],
        "clustering_type": "conv",
        "clustering_kernel_size": 7,
        "clustering_interval": [0, 0, 0, 0],
        "out_features": ["stage1", "stage2", "stage3", "stage4"],
        "image_size": 512,
    }
    assert releases.get_release("pacavit_tiny_p2cconv_100_0").label_set == "imagenet-1k"
    assert not hasattr(configuration_pacavit, "_ARCHITECTURES")
    config = PaCaViTConfig.from_official_name(release.official_name)
    assert (config.depths, config.num_clusters, config.image_size) == ([3, 3, 10, 3], [200, 200, 200, 0], 512)


def test_config_docstring_documents_each_argument_once_in_transformers_format():
    """transformers' `@auto_docstring` with a checkpoint: the common arguments from its table, PaCa-ViT's own below
    the class, one entry per argument as `name (`type`, ...):`."""
    doc = PaCaViTConfig.__doc__
    assert "[ivmcl/pacavit-tiny](https://huggingface.co/ivmcl/pacavit-tiny)" in doc
    for name in PaCaViTConfig.__annotations__:
        if name.startswith("_"):  # `out_features` / `out_indices`: keyword arguments, in the introduction
            continue
        assert len(re.findall(rf"^ +{name} \(`", doc, flags=re.MULTILINE)) == 1, name


def test_the_config_validates_once_per_construction(tmp_path):
    """`__post_init__` checks the architecture (plain `ValueError`s) and `@strict` runs its validators right after:
    the checks run once per construction, by any route; `save_pretrained` still checks a config changed since."""
    import sys

    code = PaCaViTConfig._check_architecture.__code__
    calls = []

    def count(frame, event, arg):
        if event == "call" and frame.f_code is code:
            calls.append(frame)

    def validations(build):
        calls.clear()
        sys.setprofile(count)
        try:
            built = build()
        finally:
            sys.setprofile(None)
        return built, len(calls)

    config, count_init = validations(PaCaViTConfig)
    config.save_pretrained(tmp_path)
    _, count_dict = validations(lambda: PaCaViTConfig.from_dict(config.to_dict()))
    _, count_folder = validations(lambda: PaCaViTConfig.from_pretrained(tmp_path))
    _, count_official = validations(lambda: PaCaViTConfig.from_official_name("pacavit_tiny_p2cconv_100_0"))
    assert (count_init, count_dict, count_folder, count_official) == (1, 1, 1, 1)

    config.hidden_sizes = [96, 190, 320, 384]  # not divisible by 4 heads in stage 2
    with pytest.raises(Exception, match=r"`hidden_sizes\[1\]` = 190 is not divisible"):
        config.save_pretrained(tmp_path / "changed")
