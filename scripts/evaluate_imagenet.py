#!/usr/bin/env python
"""Top-1 / top-5 accuracy of a PaCa-ViT classifier on a validation image folder.

    python scripts/evaluate_imagenet.py --model pacavit-small --validation_dir imagenet/val --output val.json

`--model` is a folder or a Hub id holding the model and, normally, its image processor: the images get the model's
own evaluation transform (for the authors' models: shorter side to floor(224 / 0.9) = 248, bicubic, centre crop 224,
ImageNet mean / std). Without a saved image processor the authors' transform (`PaCaViTImageProcessor()`) is used. A sample whose
scores are not all finite (NaN, inf) counts as wrong.

The folder has `datasets`' imagefolder layout: one sub-folder per class, whose name is the label; `datasets`
numbers the classes in sorted folder-name order. How those are matched to the model's output indices
(`--label_mapping`):

    names   through the model's `config.label2id`: every folder name must be a label name of the model. Models
            trained with scripts/train_imagenet.py on an image folder store the folder names, so a validation
            folder holding only some of the classes is still scored correctly.
    sorted  folder i (in sorted order) is class i; the number of folders must equal the model's number of labels.
            This is the convention for ImageNet-1k laid out by WordNet synset (n01440764/, n01443537/, ...): the
            sorted synsets are the standard class order of the authors' (and timm's) checkpoints, whose label names
            are the readable ones ("tench, Tinca tinca").
    auto    (default) `names` when every folder name is one of the model's label names, else `sorted` (the
            mapping chosen is printed and written to the JSON).

Prints the accuracies (in percent) and, with `--output`, writes them to a JSON file as fractions (`top1`, `top5`,
the form of the `accuracy_topk` metric) and as percentages (`top1_percent`, `top5_percent`).
"""

import sys

from paca_hf.training.imagenet_evaluation import main


if __name__ == "__main__":
    sys.exit(main())
