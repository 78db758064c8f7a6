"""Configuration, read in one place: the fast tier (no server)."""

from pathlib import Path

import pytest

from tenantfleet import config
from tenantfleet.errors import ConfigError


def test_the_state_directory_is_found_as_git_finds_dot_git(tmp_path: Path) -> None:
    deep = tmp_path / "app" / "src" / "pkg"
    deep.mkdir(parents=True)
    assert config.state_dir(None, start=deep) == deep / ".tenantfleet"  # none yet: here
    (tmp_path / "app" / ".tenantfleet").mkdir()
    assert config.state_dir(None, start=deep) == tmp_path / "app" / ".tenantfleet"
    assert config.state_dir("elsewhere", start=deep) == Path("elsewhere").absolute()


def test_a_tenant_environment_that_is_not_a_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TENANTFLEET_TENANT_ALEMBIC names no file"):
        config.load_settings({"TENANTFLEET_TENANT_ALEMBIC": str(tmp_path / "nope.ini")})
