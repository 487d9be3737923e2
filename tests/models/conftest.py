def pytest_configure(config):
    # Markers that transformers' common tests use (registered by transformers' own conftest).
    for marker in (
        "flash_attn_test",
        "flash_attn_3_test",
        "flash_attn_4_test",
        "torch_compile_test",
        "torch_export_test",
        "is_pipeline_test",
        "generate",
        "is_training_test",
        "is_tensor_parallel_test",
        "accelerate_tests",
        "slow",
    ):
        config.addinivalue_line("markers", f"{marker}: a marker of transformers' common tests")
