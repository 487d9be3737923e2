"""Image classification training: the authors' ImageNet-1k recipe on transformers' `Trainer`, with timm's
augmentation.

* `arguments`: every flag of `scripts/train_imagenet.py` (transformers' `run_image_classification.py` names, the
  augmentation's, `TrainingArguments` with the recipe as defaults);
* `train`: the training set with timm's transform, Mixup / CutMix, `PaCaTrainer`, exact resume and
  `train_and_evaluate` (imports timm: the training extra, `pip install -e ".[train]"`);
* `evaluation`: the evaluation transform and collate, and top-1 / top-5 accuracy on an image folder
  (`scripts/evaluate_imagenet.py`).

Importing this package (and `arguments`, `evaluation`) needs no timm; only `train` does.
"""
