import pytest
from transformers_suite import PACKAGE, fetch


def test_a_version_pip_cannot_have_is_named_and_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="could not download the transformers 0.0.1 sdist"):
        fetch("0.0.1", root=tmp_path)  # transformers 0.0.1 was never released
    assert list(tmp_path.iterdir()) == []


def test_the_cached_suite_is_used_without_a_download(tmp_path):
    home = tmp_path / "transformers-9.9.9"
    (home / PACKAGE).mkdir(parents=True)
    (home / PACKAGE / "test_modeling_common.py").write_text("")
    assert fetch("9.9.9", root=tmp_path) == home  # a download would fail: 9.9.9 does not exist
