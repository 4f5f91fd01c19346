from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import pytest

from abtest.config import (
    ArmSpec,
    RunConfig,
    auto_ctx_size,
    final_argv,
    load_arms_file,
    parse_arm,
    resolve_arms,
    shipped_profiles,
    validate,
)
from abtest.errors import ConfigError


def test_parse_arm_with_args_is_an_argv_list() -> None:
    arm = parse_arm('ncmoe12="-ngl 99 --n-cpu-moe 12"'.replace('"', ""))
    assert arm == ArmSpec(name="ncmoe12", args=("-ngl", "99", "--n-cpu-moe", "12"))
    quoted = parse_arm("x=-ngl 99 --override-tensor 'a b=CPU'")
    assert quoted.args == ("-ngl", "99", "--override-tensor", "a b=CPU")


@pytest.mark.parametrize("name,args", [("baseline", ("-ngl", "99")), ("cpu-moe", ("-ngl", "99", "--cpu-moe")),
                                       ("ncmoe7", ("-ngl", "99", "--n-cpu-moe", "7"))])
def test_ready_made_arms(name: str, args: tuple[str, ...]) -> None:
    assert parse_arm(name).args == args


@pytest.mark.parametrize("bad", ["=oops", "no spaces allowed=1 '", "weird", "a b=1"])
def test_malformed_arm_is_a_config_error_quoting_it(bad: str) -> None:
    with pytest.raises(ConfigError, match="--arm"):
        parse_arm(bad)


def test_default_arms_and_flag_override() -> None:
    assert [a.name for a in resolve_arms([], None)] == ["baseline", "cpu-moe"]
    arms = resolve_arms(["baseline=-ngl 50"], "llama-server")
    assert [a.name for a in arms] == ["cpu-moe", "baseline"]
    assert arms[1].args == ("-ngl", "50")


def test_arms_files_shipped_parse() -> None:
    assert shipped_profiles() == ["llama-server", "shimmy"]
    assert [a.name for a in load_arms_file("llama-server")] == ["baseline", "cpu-moe"]
    shimmy = load_arms_file("shimmy.toml")  # the file name of a shipped profile works too
    assert shimmy[1].args == ("serve", "--cpu-moe") and shimmy[0].pin is False
    assert shimmy[0].listen_args == ("--bind", "{host}:{port}")


def test_shipped_profiles_are_package_data_not_read_from_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no servers/ here: an installed abtest runs from anywhere
    assert [a.name for a in load_arms_file("llama-server")] == ["baseline", "cpu-moe"]
    for name in shipped_profiles():
        assert (files("abtest") / "data" / "servers" / f"{name}.toml").is_file()


def test_arms_file_path_wins_over_a_shipped_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("llama-server").write_text('[arms.mine]\nargs = ["-ngl", "1"]\n')
    assert [a.name for a in load_arms_file("llama-server")] == ["mine"]
    other = tmp_path / "sub" / "p.toml"
    other.parent.mkdir()
    other.write_text('[arms.x]\nargs = []\n')
    assert [a.name for a in load_arms_file(other)] == ["x"]


@pytest.mark.parametrize("bad", ["nope", "servers/llama-server.toml", "./shimmy"])
def test_unknown_arms_file_names_the_shipped_profiles(bad: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"--arms-file .*: cannot read .*shipped profiles: llama-server, shimmy"):
        load_arms_file(bad)


def test_run_help_shows_a_shipped_profile_example() -> None:
    from click.testing import CliRunner

    from abtest.cli import cli

    res = CliRunner().invoke(cli, ["run", "--help"], terminal_width=200)
    assert res.exit_code == 0
    assert "--arms-file llama-server " in res.output
    assert "llama-server, shimmy" in res.output


def test_final_argv_pins_what_the_arm_leaves_open() -> None:
    cfg = RunConfig(model="m", arms=(), concurrency=4, threads=3, flash_attn="on")
    arm = ArmSpec("cpu-moe", ("-ngl", "99", "--cpu-moe"))
    argv = final_argv(arm, cfg, "/bin/llama-server", "/m.gguf", 2048, supports_fit=True)
    assert argv[:4] == ["/bin/llama-server", "-m", "/m.gguf", "-ngl"]
    assert argv.count("-ngl") == 1
    for flag, value in [("--fit", "off"), ("-c", "2048"), ("-np", "4"), ("-t", "3"), ("-fa", "on")]:
        assert argv[argv.index(flag) + 1] == value
    # An arm that sets a flag keeps its own value; --fit is left out where the binary lacks it.
    own = final_argv(ArmSpec("a", ("-c", "999", "--threads=8")), cfg, "s", "m", 2048, supports_fit=False)
    assert "--fit" not in own and own.count("-c") == 1 and "-t" not in own


def test_auto_ctx_size_covers_longest_prompt_plus_generation_per_slot() -> None:
    assert auto_ctx_size(3072, 128, 1) == 3328
    assert auto_ctx_size(100, 128, 4) % 256 == 0 and auto_ctx_size(100, 128, 4) >= 4 * 228


@pytest.mark.parametrize("field,value", [("runs", 0), ("concurrency", 0), ("max_tokens", 1), ("rate", -1.0),
                                         ("schedule", "random"), ("endpoint", "x")])
def test_validate_refuses_bad_values(field: str, value: object) -> None:
    cfg = RunConfig(model="m", arms=(ArmSpec("a", ()),), **{field: value})  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        validate(cfg)


# ------------------------------------------------------------ implementations as arms: a server per arm


def _profile(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "arms.toml"
    p.write_text(body)
    return p


def test_profile_arms_name_their_own_server(tmp_path: Path) -> None:
    arms = load_arms_file(_profile(tmp_path, """
[arms.old]
args = ["-ngl", "99", "--cpu-moe"]
server_bin = "/opt/b1/llama-server"
[arms.new]
args = ["-ngl", "99", "--cpu-moe"]
build = "new"
[arms.plain]
args = ["-ngl", "99"]
"""))
    assert [(a.name, a.server_bin, a.build) for a in arms] == [
        ("old", "/opt/b1/llama-server", None), ("new", None, "new"), ("plain", None, None)]


@pytest.mark.parametrize("body,match", [
    ('[arms.x]\nargs = []\nserver_bin = "/a"\nbuild = "new"\n', "both server_bin and build"),
    ('[arms.x]\nargs = []\nbuild = 3\n', "build must be a non-empty string"),
    ('[arms.x]\nargs = []\nserver_bin = ""\n', "server_bin must be a non-empty string"),
])
def test_profile_server_mistakes_are_one_line(tmp_path: Path, body: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_arms_file(_profile(tmp_path, body))


def test_arm_server_and_arm_build_flags_bind_one_arm_each(tmp_path: Path) -> None:
    profile = _profile(tmp_path, '[arms.old]\nargs = ["--cpu-moe"]\nbuild = "pinned"\n'
                                 '[arms.new]\nargs = ["--cpu-moe"]\n')
    arms = resolve_arms([], str(profile), servers=["old=/opt/b1/llama-server"], builds=["new=new"])
    assert [(a.name, a.server_bin, a.build) for a in arms] == [
        ("old", "/opt/b1/llama-server", None),  # the flag replaces the profile's build
        ("new", None, "new")]
    assert [a.args for a in arms] == [("--cpu-moe",), ("--cpu-moe",)]


@pytest.mark.parametrize("servers,builds,match", [
    (["nope=/x"], [], "no arm named 'nope'; the arms are baseline, cpu-moe"),
    (["baseline"], [], "expected ARM=VALUE"),
    ([], ["baseline="], "expected ARM=VALUE"),
    (["baseline=/x"], ["baseline=new"], "already has a server"),
])
def test_arm_server_flag_mistakes(servers: list[str], builds: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        resolve_arms([], None, servers=servers, builds=builds)


def test_run_with_a_bad_arm_server_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    from abtest import cli

    with pytest.raises(SystemExit) as exc:
        cli.main(["run", "-m", "x.gguf", "--arm-server", "nope=/x"])
    assert exc.value.code == 2
    assert "no arm named 'nope'" in capsys.readouterr().err


def test_arm_model_flag_gives_one_arm_its_own_model() -> None:
    arms = resolve_arms(["baseline", "cpu-moe", "dense=-ngl 99"], None, models=["dense = smollm2-135m"])
    assert [(a.name, a.model) for a in arms] == [("baseline", None), ("cpu-moe", None), ("dense", "smollm2-135m")]
    assert arms[2].args == ("-ngl", "99")


@pytest.mark.parametrize("models,match", [
    (["nope=m.gguf"], "--arm-model 'nope=m.gguf': no arm named 'nope'; the arms are baseline, cpu-moe"),
    (["baseline"], "expected ARM=MODEL"),
    (["baseline=a.gguf", "baseline=b.gguf"], "already has a model"),
])
def test_arm_model_flag_mistakes(models: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        resolve_arms([], None, models=models)
