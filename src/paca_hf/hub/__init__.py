"""Hub repos of converted PaCa-ViT checkpoints, above the pure converter (`paca_hf.convert`).

A repo built here holds `config.json`, `model.safetensors`, `preprocessor_config.json`, `README.md` (the model card)
and, except for UperNet, the package's source files with an `auto_map`, so that `trust_remote_code=True` loads it
where `paca_hf` is not installed. `publish` uploads a repo only after its conversion was strict and every check in
`check_repo` passed.

- `remote_code`: which source files ship, `auto_map`, and the check that a repo loads as remote code;
- `model_card`: the card (template in `paca_hf/templates/`) and the README's release table;
- `repo`: writing a complete repo atomically and checking it (`convert_checkpoint`, `build_repo`);
- `publishing`: downloading the authors' checkpoints and uploading every release.

The table of releases itself is `paca_hf.releases`.
"""

from ..releases import OFFICIAL_NAMES, RELEASES, Release, get_release
from .errors import PublishError
from .model_card import (
    check_model_card,
    custom_release,
    extract_usage_snippet,
    model_card_data,
    model_card_template,
    render_model_card,
    render_releases_table,
    usage_snippet,
)
from .publishing import download_checkpoint, locate_checkpoint, publish, summary_table, upload_repo
from .remote_code import (
    ALLOWED_IMPORTS,
    CLASSIFICATION,
    OPTIONAL_IMPORTS,
    REMOTE_CODE_MODULES,
    SEGMENTATION,
    add_remote_code,
    auto_map,
    check_remote_code,
    hidden_package_environment,
    remote_code_files,
)
from .repo import (
    PICKLE_SUFFIXES,
    REPO_FILES,
    BuiltRepo,
    build_repo,
    check_repo,
    convert_checkpoint,
    form_of,
    release_card,
    repo_files,
    write_release_cards,
    write_repo,
)


__all__ = [
    "ALLOWED_IMPORTS",
    "CLASSIFICATION",
    "OFFICIAL_NAMES",
    "OPTIONAL_IMPORTS",
    "PICKLE_SUFFIXES",
    "RELEASES",
    "REMOTE_CODE_MODULES",
    "REPO_FILES",
    "SEGMENTATION",
    "BuiltRepo",
    "PublishError",
    "Release",
    "add_remote_code",
    "auto_map",
    "build_repo",
    "check_model_card",
    "check_remote_code",
    "check_repo",
    "convert_checkpoint",
    "custom_release",
    "download_checkpoint",
    "extract_usage_snippet",
    "form_of",
    "get_release",
    "hidden_package_environment",
    "locate_checkpoint",
    "model_card_data",
    "model_card_template",
    "publish",
    "release_card",
    "remote_code_files",
    "render_model_card",
    "render_releases_table",
    "repo_files",
    "summary_table",
    "upload_repo",
    "usage_snippet",
    "write_release_cards",
    "write_repo",
]
