"""The one table of the checkpoints the authors of PaCa-ViT released.

Each `Release` says, for one official name: the PaCa-ViT architecture (read by
`PaCaViTConfig.from_official_name`), the form it takes in transformers (`form`, read by the converter), the Hub repo
id `scripts/publish_all.py` creates, the authors' download URL and their published result (read by the model cards
and the README's release table).

This module imports only the standard library: it ships as remote code next to `configuration_pacavit.py`.
"""

import copy
from dataclasses import dataclass


ORGANIZATION = "ivmcl"
RELEASE_URL_PREFIX = "https://github.com/iVMCL/PaCaViT/releases/download/pacavit/"

# What a release becomes in transformers.
CLASSIFIER = "classifier"  # PaCaViTForImageClassification
SEGMENTOR = "segmentor"  # PaCaViTForSemanticSegmentation (the paper's PaCa head)
UPERNET = "upernet"  # transformers' UperNetForSemanticSegmentation over a PaCaViTBackbone
DETECTOR = "detector"  # PaCaViTMaskRCNNForInstanceSegmentation (the authors' COCO Mask R-CNN, whole)
BACKBONE = "backbone"  # PaCaViTBackbone extracted from a downstream model (`--task backbone`)
FORMS = (CLASSIFIER, SEGMENTOR, UPERNET, DETECTOR, BACKBONE)

# The converter's task for each form (`scripts/convert_official_checkpoint.py --task`).
FORM_TASKS = {
    CLASSIFIER: "image-classification",
    SEGMENTOR: "semantic-segmentation",
    UPERNET: "semantic-segmentation",
    DETECTOR: "instance-segmentation",
    BACKBONE: "backbone",
}


# The sizes of the authors' released models (`_arch_settings` in their `models/paca_vit.py`): `Architecture.size`.
SIZES = {
    "tiny": {"hidden_sizes": [96, 192, 320, 384], "depths": [2, 2, 4, 2], "drop_path_rate": 0.1},
    "small": {"hidden_sizes": [96, 192, 320, 384], "depths": [3, 3, 10, 3], "drop_path_rate": 0.1},
    "base": {"hidden_sizes": [96, 192, 384, 512], "depths": [3, 3, 18, 3], "drop_path_rate": 0.5},
    "tiny_teacher": {
        "hidden_sizes": [96, 192, 320, 384],
        "depths": [2, 2, 2, 2],
        "teacher_depths": [2, 2, 2, 2],
        "drop_path_rate": 0.1,
    },
    "small_teacher": {
        "hidden_sizes": [96, 192, 320, 384],
        "depths": [3, 3, 7, 3],
        "teacher_depths": [2, 2, 2, 2],
        "drop_path_rate": 0.1,
    },
    "base_teacher": {
        "hidden_sizes": [96, 192, 384, 512],
        "depths": [3, 3, 16, 3],
        "teacher_depths": [2, 2, 4, 2],
        "drop_path_rate": 0.1,
    },
}


@dataclass(frozen=True)
class Architecture:
    """A PaCa-ViT in the terms of the authors' model names: `size` is a key of `SIZES` ("tiny", "small_teacher",
    ...); `drop_path_rate` None keeps that size's default."""

    size: str
    clustering_type: str
    num_clusters: tuple[int, ...]
    clustering_interval: int = 0
    drop_path_rate: float | None = None


@dataclass(frozen=True)
class Release:
    """One checkpoint released by the authors (or, for `numbers_source="counted"`, defined in their code).

    `url` is None where the authors give no download link. `initialized_from` names the ImageNet-1k classifier a
    downstream model's backbone started from. `metric` is ImageNet-1k top-1 (%) or ADE20k single-scale mIoU (%) as
    published; `result` the published result in words where `metric` does not say it (COCO box / mask AP of the whole
    detector). `params_m` (millions) and `gmacs` (one forward pass at 224x224 / 512x512; COCO: the whole detector,
    GFLOPs as published) are the published figures of the authors' whole model."""

    official_name: str
    form: str
    architecture: Architecture
    repo_id: str
    title: str
    url: str | None
    metric: float | None
    params_m: float | None
    gmacs: float | None
    initialized_from: str | None = None
    numbers_source: str = "paper"
    note: str = ""
    result: str | None = None

    @property
    def task(self) -> str:
        return FORM_TASKS[self.form]

    @property
    def repo_name(self) -> str:
        return self.repo_id.split("/")[-1]

    @property
    def dataset(self) -> str:
        return {
            CLASSIFIER: "imagenet-1k",
            SEGMENTOR: "scene_parse_150",
            UPERNET: "scene_parse_150",
            DETECTOR: "detection-datasets/coco",
            BACKBONE: "detection-datasets/coco",
        }[self.form]

    @property
    def label_set(self) -> str | None:
        """The class names of the release's head (`"imagenet-1k"` or `"ade20k"`, files shipped in `paca_hf/data`);
        None for a backbone, and for UperNet and the detectors, whose labels are the UperNet / detector config's."""
        return {CLASSIFIER: "imagenet-1k", SEGMENTOR: "ade20k"}.get(self.form)

    def config_kwargs(self) -> dict:
        """`PaCaViTConfig` keyword arguments of the release's PaCa-ViT (for UperNet and Mask R-CNN, of the backbone
        inside, with all four stages out); the class names are `label_set`'s."""
        architecture = self.architecture
        kwargs = copy.deepcopy(SIZES[architecture.size])
        num_stages = len(kwargs["depths"])
        kwargs.update(
            num_attention_heads=[2, 4, 8, 16],
            mlp_ratios=[4] * num_stages,
            num_clusters=list(architecture.num_clusters),
            clustering_type=architecture.clustering_type,
            clustering_kernel_size=7,
            clustering_interval=[architecture.clustering_interval] * num_stages,
        )
        if architecture.drop_path_rate is not None:
            kwargs["drop_path_rate"] = architecture.drop_path_rate
        if self.form != CLASSIFIER:
            kwargs["out_features"] = [f"stage{index}" for index in range(1, num_stages + 1)]
            if self.form not in (BACKBONE, DETECTOR):
                kwargs["image_size"] = 512
        return kwargs

    @property
    def checkpoint_filenames(self) -> list[str]:
        """File names looked for in a local checkpoints folder, best first."""
        names = [self.url.rsplit("/", 1)[-1]] if self.url else []
        if self.form == CLASSIFIER:
            names.append(f"IMNET_224_{self.official_name}.pth")
        names.append(f"{self.official_name}.pth")
        return list(dict.fromkeys(names))


_CONV100 = ("conv", (100, 100, 100, 0))
_DOWNSTREAM = (200, 200, 200, 0)


def _release(name, form, architecture, repo, title, file, metric, params_m, gmacs, **extra) -> Release:
    url = RELEASE_URL_PREFIX + file if file else None
    return Release(name, form, architecture, f"{ORGANIZATION}/{repo}", title, url, metric, params_m, gmacs, **extra)


def _classifier(name, size, clustering, repo, title, metric, params_m, gmacs, interval=0, **extra):
    file = extra.pop("file", f"IMNET_224_{name}.pth")
    architecture = Architecture(size, clustering[0], clustering[1], interval)
    return _release(name, CLASSIFIER, architecture, repo, title, file, metric, params_m, gmacs, **extra)


def _downstream(name, form, backbone, architecture, repo, title, metric, params_m, gmacs, **extra):
    return _release(
        name,
        form,
        architecture,
        repo,
        title,
        f"{name}.pth",
        metric,
        params_m,
        gmacs,
        initialized_from=backbone,
        **extra,
    )


RELEASES: tuple[Release, ...] = (
    # ImageNet-1k classifiers (224x224): conv clustering, MLP clustering, the ConvMixer-teacher models, ablations.
    _classifier("pacavit_tiny_p2cconv_100_0", "tiny", _CONV100, "pacavit-tiny", "PaCa-Tiny (conv)", 80.9, 12.2, 3.2),
    _classifier(
        "pacavit_small_p2cconv_100_0", "small", _CONV100, "pacavit-small", "PaCa-Small (conv)", 83.08, 22.0, 5.5
    ),
    _classifier("pacavit_base_p2cconv_100_0", "base", _CONV100, "pacavit-base", "PaCa-Base (conv)", 83.96, 46.9, 9.5),
    _classifier(
        "pacavit_small_p2cmlp_100_0",
        "small",
        ("mlp", (100, 100, 100, 0)),
        "pacavit-small-mlp",
        "PaCa-Small (mlp)",
        83.13,
        22.6,
        5.9,
    ),
    _classifier(
        "pacavit_convmixer_tiny_100",
        "tiny_teacher",
        ("conv", (100, 100, 100, 100)),
        "pacavit-tiny-teacher",
        "PaCa-Tiny (teacher)",
        None,
        12.5,
        3.4,
        file=None,
        numbers_source="counted",
        note="not released: the authors' README gives no download link or result for this checkpoint",
    ),
    _classifier(
        "pacavit_convmixer_small_100",
        "small_teacher",
        ("conv", (100, 100, 100, 100)),
        "pacavit-small-teacher",
        "PaCa-Small (teacher)",
        83.17,
        21.1,
        5.4,
    ),
    _classifier(
        "pacavit_convmixer_base_100",
        "base_teacher",
        ("conv", (100, 100, 100, 100)),
        "pacavit-base-teacher",
        "PaCa-Base (teacher)",
        84.22,
        46.7,
        9.7,
    ),
    _classifier(
        "pacavit_small_p2cconv_2_0",
        "small",
        ("conv", (2, 2, 2, 0)),
        "pacavit-small-clusters-2-0",
        "PaCa-Small, clusters 2/2/2/0",
        82.28,
        22.0,
        4.7,
    ),
    _classifier(
        "pacavit_small_p2cconv_49_0",
        "small",
        ("conv", (49, 49, 49, 0)),
        "pacavit-small-clusters-49-0",
        "PaCa-Small, clusters 49/49/49/0",
        82.95,
        22.0,
        5.0,
    ),
    _classifier(
        "pacavit_small_p2cconv_49_100",
        "small",
        ("conv", (49, 64, 81, 100)),
        "pacavit-small-clusters-49-100",
        "PaCa-Small, clusters 49/64/81/100",
        82.98,
        22.2,
        5.3,
    ),
    _classifier(
        "pacavit_small_p2cconv_100_49",
        "small",
        ("conv", (100, 81, 64, 49)),
        "pacavit-small-clusters-100-49",
        "PaCa-Small, clusters 100/81/64/49",
        82.87,
        22.2,
        5.3,
    ),
    _classifier(
        "pacavit_small_p2cconv_100",
        "small",
        ("conv", (100, 100, 100, 100)),
        "pacavit-small-clusters-100",
        "PaCa-Small, clusters 100/100/100/100",
        83.05,
        22.3,
        5.6,
    ),
    _classifier(
        "pacavit_small_p2cconv_100_blockwise",
        "small",
        ("conv", (100, 100, 100, 100)),
        "pacavit-small-blockwise",
        "PaCa-Small, block-wise clustering",
        82.93,
        24.1,
        6.1,
        interval=1,
    ),
    # ADE20k semantic segmentation (512x512, 160k iterations), the paper's PaCa head; backbones with the downstream
    # cluster counts.
    _downstream(
        "pacahead_pacavit_tiny_p2cconv_100_0_512x512_160k_ade20k",
        SEGMENTOR,
        "pacavit_tiny_p2cconv_100_0",
        Architecture("tiny", "conv", _DOWNSTREAM),
        "pacavit-tiny-ade20k",
        "PaCa-Tiny (conv) + PaCa head",
        45.65,
        13.3,
        34.4,
    ),
    _downstream(
        "pacahead_pacavit_small_p2cconv_100_0_512x512_160k_ade20k",
        SEGMENTOR,
        "pacavit_small_p2cconv_100_0",
        Architecture("small", "conv", _DOWNSTREAM),
        "pacavit-small-ade20k",
        "PaCa-Small (conv) + PaCa head",
        48.3,
        23.2,
        47.2,
    ),
    _downstream(
        "pacahead_pacavit_base_p2cconv_100_0_512x512_160k_ade20k",
        SEGMENTOR,
        "pacavit_base_p2cconv_100_0",
        Architecture("base", "conv", _DOWNSTREAM),
        "pacavit-base-ade20k",
        "PaCa-Base (conv) + PaCa head",
        50.39,
        48.0,
        68.5,
    ),
    _downstream(
        "pacahead_pacavit_small_p2cmlp_100_0_512x512_160k_ade20k",
        SEGMENTOR,
        "pacavit_small_p2cmlp_100_0",
        Architecture("small", "mlp", _DOWNSTREAM),
        "pacavit-small-mlp-ade20k",
        "PaCa-Small (mlp) + PaCa head",
        48.2,
        24.0,
        50.0,
    ),
    _downstream(
        "pacahead_pacavit_convmixer_small_100_512x512_160k_ade20k",
        SEGMENTOR,
        "pacavit_convmixer_small_100",
        Architecture("small_teacher", "conv", (200, 200, 200, 200)),
        "pacavit-small-teacher-ade20k",
        "PaCa-Small (teacher) + PaCa head",
        46.2,
        22.2,
        46.4,
    ),
    _downstream(
        "pacahead_pacavit_convmixer_base_100_512x512_160k_ade20k",
        SEGMENTOR,
        "pacavit_convmixer_base_100",
        Architecture("base_teacher", "conv", (200, 200, 200, 200), drop_path_rate=0.5),
        "pacavit-base-teacher-ade20k",
        "PaCa-Base (teacher) + PaCa head",
        48.4,
        48.8,
        68.7,
    ),
    # ADE20k semantic segmentation with mmseg's UperNet head (+ auxiliary FCN head); drop path 0.1 for every size.
    _downstream(
        "upernet_pacavit_tiny_p2cconv_100_0_512x512_160k_ade20k",
        UPERNET,
        "pacavit_tiny_p2cconv_100_0",
        Architecture("tiny", "conv", _DOWNSTREAM, drop_path_rate=0.1),
        "pacavit-tiny-upernet-ade20k",
        "PaCa-Tiny (conv) + UperNet",
        44.49,
        41.6,
        229.9,
    ),
    _downstream(
        "upernet_pacavit_small_p2cconv_100_0_512x512_160k_ade20k",
        UPERNET,
        "pacavit_small_p2cconv_100_0",
        Architecture("small", "conv", _DOWNSTREAM, drop_path_rate=0.1),
        "pacavit-small-upernet-ade20k",
        "PaCa-Small (conv) + UperNet",
        47.6,
        51.4,
        242.7,
    ),
    _downstream(
        "upernet_pacavit_base_p2cconv_100_0_512x512_160k_ade20k",
        UPERNET,
        "pacavit_base_p2cconv_100_0",
        Architecture("base", "conv", _DOWNSTREAM, drop_path_rate=0.1),
        "pacavit-base-upernet-ade20k",
        "PaCa-Base (conv) + UperNet",
        49.67,
        77.2,
        264.1,
    ),
    # COCO Mask R-CNN 1x, whole (PaCaViTMaskRCNNForInstanceSegmentation); the backbone keeps the ImageNet cluster
    # counts.
    _downstream(
        "mask_rcnn_pacavit_tiny_p2cconv_100_0_mstrain_480_800_1x_coco",
        DETECTOR,
        "pacavit_tiny_p2cconv_100_0",
        Architecture("tiny", "conv", _CONV100[1], drop_path_rate=0.1),
        "pacavit-tiny-coco",
        "PaCa-Tiny (conv) + Mask R-CNN",
        None,
        32.0,
        252,
        result="43.3 box AP / 39.6 mask AP",
    ),
    _downstream(
        "mask_rcnn_pacavit_small_p2cconv_100_0_mstrain_480_800_1x_coco",
        DETECTOR,
        "pacavit_small_p2cconv_100_0",
        Architecture("small", "conv", _CONV100[1], drop_path_rate=0.1),
        "pacavit-small-coco",
        "PaCa-Small (conv) + Mask R-CNN",
        None,
        41.8,
        296,
        result="46.4 box AP / 41.8 mask AP",
    ),
    _downstream(
        "mask_rcnn_pacavit_small_p2cmlp_100_0_mstrain_480_800_1x_coco",
        DETECTOR,
        "pacavit_small_p2cmlp_100_0",
        Architecture("small", "mlp", _CONV100[1], drop_path_rate=0.1),
        "pacavit-small-mlp-coco",
        "PaCa-Small (mlp) + Mask R-CNN",
        None,
        42.4,
        303,
        result="46.6 box AP / 41.9 mask AP",
    ),
    _downstream(
        "mask_rcnn_pacavit_base_p2cconv_100_0_mstrain_480_800_1x_coco",
        DETECTOR,
        "pacavit_base_p2cconv_100_0",
        Architecture("base", "conv", _CONV100[1], drop_path_rate=0.1),
        "pacavit-base-coco",
        "PaCa-Base (conv) + Mask R-CNN",
        None,
        66.6,
        373,
        result="48.0 box AP / 42.9 mask AP",
    ),
)

OFFICIAL_NAMES = tuple(release.official_name for release in RELEASES)


def get_release(name: str) -> Release:
    """The release with this official name or Hub repo id (with or without the organization). Raises `KeyError`
    listing the known names."""
    for release in RELEASES:
        if name in (release.official_name, release.repo_id, release.repo_name):
            return release
    raise KeyError(f"Unknown PaCa-ViT release {name!r}. Known: {', '.join(OFFICIAL_NAMES)}.")


def releases_of(form: str) -> list[Release]:
    """The releases that take this form (`CLASSIFIER`, `SEGMENTOR`, `UPERNET`, `DETECTOR` or `BACKBONE`), in table
    order."""
    if form not in FORMS:
        raise ValueError(f"Unknown form {form!r}; choose one of {', '.join(FORMS)}.")
    return [release for release in RELEASES if release.form == form]
