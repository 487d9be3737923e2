"""The helper that fetches transformers' test mixins fails loudly when it cannot download them."""

import pytest
import transformers_tests


def test_a_failed_download_raises(tmp_path, monkeypatch):
    monkeypatch.setenv("PACA_HF_CACHE", str(tmp_path))
    with pytest.raises(RuntimeError, match="Could not download the transformers 0.0.0.dev0 source distribution"):
        transformers_tests.transformers_tests_root("0.0.0.dev0")
    assert not (tmp_path / "transformers-0.0.0.dev0-tests").exists()


def test_the_cached_sdist_holds_the_mixins():
    root = transformers_tests.load_transformers_tests()
    for name in (
        "test_modeling_common.py",
        "test_configuration_common.py",
        "test_pipeline_mixin.py",
        "test_backbone_common.py",
        "test_image_processing_common.py",
    ):
        assert (root / "tests" / name).is_file(), name
    from tests.test_image_processing_common import ImageProcessingTestMixin  # noqa: F401  (the processor helper's)


def test_a_cache_extracted_before_new_stand_ins_gets_them(tmp_path, monkeypatch):
    monkeypatch.setenv("PACA_HF_CACHE", str(tmp_path))
    root = tmp_path / "transformers-0.0.0.dev0-tests"
    (root / "tests").mkdir(parents=True)
    (root / "tests" / "test_modeling_common.py").write_text("# extracted\n")
    (root / "tests" / "__init__.py").write_text("# shipped by the sdist\n")
    (root / "src" / "transformers").mkdir(parents=True)
    assert transformers_tests.transformers_tests_root("0.0.0.dev0") == root  # no download: the cache is complete
    for relative, text in transformers_tests.STAND_INS.items():
        expected = "# shipped by the sdist\n" if relative == "tests/__init__.py" else text
        assert (root / relative).read_text() == expected, relative
    assert (root / "tests" / "test_modeling_common.py").read_text() == "# extracted\n"
