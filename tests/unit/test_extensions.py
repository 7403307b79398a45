"""The `extensions` setting: the user's own registry entries, imported from their files before the
settings that name them are checked (README: Extending ragloop)."""

from __future__ import annotations

import pytest

from ragloop.tasks import chunking
from ragloop.tasks.settings import ConfigError, load_settings

EXTENSION = """
from ragloop.tasks.chunking import register_strategy


@register_strategy("{name}")
def split_blank_lines(chunker, doc, spans=None):
    return chunker.make_chunks(doc, [(0, doc.text, ())])
"""


@pytest.fixture
def strategy_name(request):
    name = f"toy_{request.node.name[-20:]}".replace("[", "_").replace("]", "_")
    yield name
    chunking.CHUNKING_STRATEGIES.pop(name, None)


def test_a_strategy_registered_in_the_users_file_is_accepted_by_the_settings_that_name_it(tmp_path, strategy_name):
    (tmp_path / "ext").mkdir()
    (tmp_path / "ext" / "my_chunking.py").write_text(EXTENSION.format(name=strategy_name))
    config = tmp_path / "ragloop.yaml"
    config.write_text(f"chunking: {{strategy: {strategy_name}}}\n")
    with pytest.raises(ConfigError, match=f"unknown chunking strategy '{strategy_name}'"):
        load_settings(str(config))  # not registered: an error naming the field
    config.write_text(f"extensions: [ext/my_chunking.py]\nchunking: {{strategy: {strategy_name}}}\n")
    settings = load_settings(str(config))  # the path is relative to the config file's folder
    assert settings.chunking.strategy == strategy_name and settings.extensions == ["ext/my_chunking.py"]
    assert strategy_name in chunking.CHUNKING_STRATEGIES
    assert load_settings(str(config)).chunking.strategy == strategy_name, "loading again registers once"


def test_a_missing_or_broken_extension_is_a_config_error_naming_the_entry(tmp_path, monkeypatch):
    config = tmp_path / "ragloop.yaml"
    config.write_text("extensions: [nowhere.py]\n")
    with pytest.raises(ConfigError, match=r"extensions\[0\]: no such file .*nowhere.py"):
        load_settings(str(config))
    (tmp_path / "broken.py").write_text("raise RuntimeError('half-written extension')\n")
    config.write_text("extensions: [broken.py]\n")
    with pytest.raises(ConfigError, match=r"extensions\[0\] 'broken.py': RuntimeError: half-written extension"):
        load_settings(str(config))
    config.write_text("extensions: [no_such_module_anywhere]\n")
    with pytest.raises(ConfigError, match=r"extensions\[0\] 'no_such_module_anywhere': ModuleNotFoundError"):
        load_settings(str(config))
    monkeypatch.setenv("RAGLOOP_EXTENSIONS", '["json"]')  # a module name on sys.path, from the environment
    assert load_settings(str(config)).extensions == ["json"]
