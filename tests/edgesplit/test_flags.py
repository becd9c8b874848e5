"""`serve edge` / `serve cloud` flags come from the settings' fields: every setting a flag, each written once."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from cloud_service.settings import CloudSettings
from edge_service.settings import EdgeSettings
from edgesplit.cli import build_parser
from edgesplit.flags import settings_from_args


@pytest.mark.parametrize(("tier", "settings"), [("edge", EdgeSettings), ("cloud", CloudSettings)])
def test_every_setting_but_a_secret_is_a_flag_with_its_description_as_help(tier: str, settings: type) -> None:
    sub = build_parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    parser = sub._subparsers._group_actions[0].choices[tier]
    by_dest = {a.dest: a for a in parser._actions}
    for name, info in settings.model_fields.items():
        if info.annotation in (SecretStr, SecretStr | None):
            assert name not in by_dest, f"{name} is a secret: environment only"
            continue
        assert name in by_dest, f"{tier} setting {name} has no flag"
        assert by_dest[name].help == info.description and info.description


def test_flags_given_override_the_environment_and_the_rest_keep_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_CODEC", "bf16")
    monkeypatch.setenv("EDGE_REPLAN_MIN_GAIN", "0.25")
    args = build_parser().parse_args(["serve", "edge", "--model", "m", "--plan", "auto", "--workload", "64:8:4",
                                      "--no-fallback", "--codec", "int8", "--edge-memory-mb", "12.5"])
    s = settings_from_args(EdgeSettings, args)
    assert s.model_dir == Path("m") and s.cut == "auto" and s.plan_workload == "64:8:4" and s.fallback is False
    assert s.codec == "int8" and s.replan_min_gain == 0.25 and s.edge_memory_bytes == int(12.5 * 2**20)
    assert s.adaptive is True  # neither --adaptive nor --no-adaptive: the default


def test_a_flag_outside_its_choices_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["serve", "cloud", "--backend", "tensorrt"])
    assert exit_.value.code == 2 and "invalid choice: 'tensorrt'" in capsys.readouterr().err
