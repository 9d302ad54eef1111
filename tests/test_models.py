"""The one schema: Limits bounds, frozen/forbid everywhere, Policy clamping, file names, request checks."""

from __future__ import annotations

import json
import math

import pydantic
import pytest

from execbox.errors import InvalidFileError
from execbox.models import (
    MAX_FILES,
    ExecutionRequest,
    ExecutionResult,
    File,
    Limits,
    Policy,
    Status,
    StepResult,
    check_file_name,
)

# --- Limits -----------------------------------------------------------------------------------------------

BOUNDS = {  # field: (lowest valid, highest valid, invalid values)
    "wall_time_s": (0.001, 3600, [0, -1, 3600.001, math.inf, math.nan]),
    "cpu_time_s": (0.001, 3600, [0, -0.5, 3601]),
    "compile_wall_time_s": (0.001, 3600, [0, 3601]),
    "memory_mb": (8, 65536, [7, 0, 65537, 1.5]),
    "pids": (1, 4096, [0, 4097]),
    "output_bytes": (1, 256 * 1024 * 1024, [0, 256 * 1024 * 1024 + 1]),
    "file_size_mb": (1, 65536, [0, 65537]),
    "disk_mb": (1, 65536, [0, 65537]),
    "open_files": (16, 65536, [15, 65537]),
}


def test_limits_defaults() -> None:
    assert Limits().model_dump() == {
        "wall_time_s": 10.0,
        "cpu_time_s": 10.0,
        "compile_wall_time_s": 60.0,
        "memory_mb": 512,
        "pids": 128,
        "output_bytes": 1024 * 1024,
        "file_size_mb": 64,
        "disk_mb": 256,
        "open_files": 256,
        "network": False,
    }


def test_limits_bounds_cover_every_numeric_field() -> None:
    assert set(BOUNDS) | {"network"} == set(Limits.model_fields)


@pytest.mark.parametrize("field", sorted(BOUNDS))
def test_limits_bounds(field: str) -> None:
    low, high, bad = BOUNDS[field]
    assert getattr(Limits(**{field: low}), field) == low
    assert getattr(Limits(**{field: high}), field) == high
    for value in bad:
        with pytest.raises(pydantic.ValidationError) as ei:
            Limits(**{field: value})
        assert ei.value.errors()[0]["loc"] == (field,)


def test_limits_units_are_in_the_names() -> None:
    for name in Limits.model_fields:
        assert name == "network" or name.endswith(("_s", "_mb", "_bytes")) or name in ("pids", "open_files")


def test_every_limit_is_documented() -> None:
    for name, f in Limits.model_fields.items():
        assert f.description, name
    for name, f in ExecutionRequest.model_fields.items():
        assert f.description, name


# --- frozen and extra="forbid" on every model ---------------------------------------------------------------


def _instances() -> list[pydantic.BaseModel]:
    step = StepResult(status=Status.OK)
    return [
        Limits(),
        Policy(),
        File(name="a.py", content="x"),
        ExecutionRequest(language="python", code=""),
        step,
        ExecutionResult(status=Status.OK, execution_id="e", language="python", provider="mock", compile=step),
    ]


@pytest.mark.parametrize("obj", _instances(), ids=lambda o: type(o).__name__)
def test_models_are_frozen(obj: pydantic.BaseModel) -> None:
    first = next(iter(type(obj).model_fields))
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        setattr(obj, first, getattr(obj, first))
    assert type(obj).model_config["frozen"] is True


@pytest.mark.parametrize("obj", _instances(), ids=lambda o: type(o).__name__)
def test_models_forbid_unknown_fields(obj: pydantic.BaseModel) -> None:
    data = obj.model_dump()
    with pytest.raises(pydantic.ValidationError) as ei:
        type(obj).model_validate({**data, "unknown_field": 1})
    assert [e["type"] for e in ei.value.errors()] == ["extra_forbidden"]
    assert type(obj).model_config["extra"] == "forbid"
    assert type(obj).model_validate(data) == obj  # round-trips


def test_models_are_hashable_when_frozen() -> None:
    assert hash(Limits()) == hash(Limits())


# --- Policy -------------------------------------------------------------------------------------------------


def test_policy_none_gives_defaults() -> None:
    assert Policy().apply(None) == Limits()


def test_policy_unset_fields_take_defaults() -> None:
    policy = Policy(defaults=Limits(wall_time_s=3, memory_mb=100))
    got = policy.apply(Limits(pids=7))
    assert got == Limits(wall_time_s=3, memory_mb=100, pids=7)
    # an explicitly given value equal to the class default still counts as set
    assert policy.apply(Limits(wall_time_s=10.0)).wall_time_s == 10.0
    assert policy.apply(Limits(wall_time_s=10.0)).memory_mb == 100


def test_policy_caps_set_fields_by_the_maxima() -> None:
    got = Policy().apply(
        Limits(
            wall_time_s=3600,
            memory_mb=65536,
            pids=4096,
            output_bytes=256 * 1024 * 1024,
            disk_mb=65536,
            open_files=65536,
            file_size_mb=65536,
            cpu_time_s=3600,
            compile_wall_time_s=3600,
        )
    )
    assert got == Limits(
        wall_time_s=300,
        cpu_time_s=300,
        compile_wall_time_s=300,
        memory_mb=4096,
        pids=1024,
        output_bytes=64 * 1024 * 1024,
        file_size_mb=1024,
        disk_mb=2048,
        open_files=4096,
    )


def test_policy_caps_defaults_too() -> None:
    policy = Policy(defaults=Limits(wall_time_s=100), maxima=Limits(wall_time_s=5))
    assert policy.apply(None).wall_time_s == 5


def test_policy_network_cannot_be_enabled_when_forbidden() -> None:
    assert Policy().apply(Limits(network=True)).network is False
    allowing = Policy(maxima=Limits(network=True))
    assert allowing.apply(Limits(network=True)).network is True
    assert allowing.apply(None).network is False  # allowed is not on: the default stays off
    assert allowing.apply(Limits(network=False)).network is False


def test_policy_request_can_tighten() -> None:
    got = Policy().apply(Limits(wall_time_s=0.5, memory_mb=16, pids=2, output_bytes=10))
    assert (got.wall_time_s, got.memory_mb, got.pids, got.output_bytes) == (0.5, 16, 2, 10)
    assert got.cpu_time_s == 10.0  # untouched fields keep the default


def test_policy_from_json_only_counts_given_fields() -> None:
    requested = Limits.model_validate_json('{"memory_mb": 64}')
    got = Policy(defaults=Limits(wall_time_s=2)).apply(requested)
    assert (got.wall_time_s, got.memory_mb) == (2, 64)


# --- file names --------------------------------------------------------------------------------------------

GOOD_NAMES = [
    "main.py",
    "pkg/util.py",
    "a/b/c/d.txt",
    ".hidden",
    "..dots",
    "x..y",
    "名前.py",
    "with space.c",
    "/".join(["d"] * 16),
    "a" * 255,
]
BAD_NAMES = [
    "",
    "..",
    "../x",
    "a/../b",
    "a/..",
    "/etc/passwd",
    "/x",
    "./x",
    "x/.",
    "a//b",
    "a/",
    "a\x00b",
    "a\nb",
    "a\tb",
    "\x1b[31m",
    "a\x7fb",
    "a\x85b",
    "a\\b",
    "\udc80",
    "/".join(["d"] * 17),
    "a" * 256,
    "é" * 128,
]


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_good_file_names(name: str) -> None:
    assert check_file_name(name) == name
    assert File(name=name, content="").name == name


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_file_names(name: str) -> None:
    with pytest.raises(InvalidFileError):
        check_file_name(name)
    with pytest.raises(pydantic.ValidationError):
        File(name=name, content="")
    with pytest.raises(pydantic.ValidationError):
        ExecutionRequest(language="python", code="x", entry=name)


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("", "empty"),
        ("a\x00", "NUL"),
        ("/x", "relative"),
        ("../x", "'..'"),
        ("./x", "'.'"),
        ("/".join(["d"] * 17), "too deep"),
        ("a\x01", "control"),
    ],
)
def test_file_name_error_messages(name: str, words: str) -> None:
    with pytest.raises(InvalidFileError, match=words):
        check_file_name(name)


def test_file_data() -> None:
    assert File(name="a", content="é").data() == "é".encode()
    assert File(name="a", content=b"\xff\x00").data() == b"\xff\x00"
    with pytest.raises(pydantic.ValidationError, match="UTF-8"):
        File(name="a", content="\udc80")


# --- ExecutionRequest --------------------------------------------------------------------------------------


def test_request_requires_code_or_files() -> None:
    with pytest.raises(pydantic.ValidationError, match="give `code` or at least one file"):
        ExecutionRequest(language="python")
    assert ExecutionRequest(language="python", code="").code == ""
    assert ExecutionRequest(language="python", files=[File(name="a.py", content="")]).code is None


def test_request_rejects_duplicate_file_names() -> None:
    with pytest.raises(pydantic.ValidationError, match="unique"):
        ExecutionRequest(
            language="python", files=[File(name="a.py", content="1"), File(name="a.py", content="2")]
        )


def test_request_file_count() -> None:
    files = [File(name=f"f{i}.py", content="") for i in range(MAX_FILES)]
    assert len(ExecutionRequest(language="python", files=files).files) == 256
    with pytest.raises(pydantic.ValidationError, match="at most 256 files"):
        ExecutionRequest(language="python", files=[*files, File(name="one-more.py", content="")])


@pytest.mark.parametrize(
    "env", [{"": "x"}, {"A=B": "x"}, {"A\x00": "x"}, {"A": "x\x00y"}, {"\udc80": "x"}, {"A": "\udc80"}]
)
def test_request_rejects_bad_env(env: dict[str, str]) -> None:
    with pytest.raises(pydantic.ValidationError):
        ExecutionRequest(language="python", code="", env=env)


def test_request_accepts_ordinary_env() -> None:
    env = {"A": "1", "lower_case": "", "WITH_EQ_IN_VALUE": "a=b"}
    assert ExecutionRequest(language="python", code="", env=env).env == env


@pytest.mark.parametrize("args", [["a\x00b"], ["\udc80"]])
def test_request_rejects_bad_args(args: list[str]) -> None:
    with pytest.raises(pydantic.ValidationError):
        ExecutionRequest(language="python", code="", args=args)


@pytest.mark.parametrize("field", ["code", "stdin"])
def test_request_rejects_text_that_is_not_utf8(field: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=f"{field} is not valid UTF-8"):
        ExecutionRequest(language="python", **{"code": "", field: "ok \udc80"})


def test_request_accepts_bytes_stdin_and_big_code() -> None:
    big = "x = 1\n" * (10 * 1024 * 1024 // 6)
    r = ExecutionRequest(language="python", code=big, stdin=b"\xff\xfe")
    assert len(r.code or "") == len(big)
    assert r.stdin == b"\xff\xfe"


def test_request_from_json() -> None:
    r = ExecutionRequest.model_validate_json(
        json.dumps(
            {
                "language": "c",
                "files": [{"name": "main.c", "content": "int main(){}"}],
                "limits": {"memory_mb": 64},
                "args": ["1"],
                "env": {"K": "V"},
                "arguments": {"x": [1, 2]},
            }
        )
    )
    assert r.files[0].data() == b"int main(){}"
    assert r.limits is not None and r.limits.model_fields_set == {"memory_mb"}
    assert r.arguments == {"x": [1, 2]}


# --- results and the JSON schema ---------------------------------------------------------------------------


def test_result_ok_and_output() -> None:
    r = ExecutionResult(
        status=Status.OK, execution_id="e", language="python", provider="mock", stdout="a", stderr="b"
    )
    assert r.ok is True
    assert r.output == "ab"
    assert r.model_copy(update={"status": Status.TIMEOUT}).ok is False


def test_status_values() -> None:
    assert [s.value for s in Status] == [
        "ok",
        "runtime_error",
        "compile_error",
        "timeout",
        "memory_limit",
        "output_limit",
        "killed",
        "internal_error",
    ]


def test_json_schemas_generate() -> None:
    req = ExecutionRequest.model_json_schema()
    res = ExecutionResult.model_json_schema()
    assert req["title"] == "ExecutionRequest"
    assert req["required"] == ["language"]
    assert req["additionalProperties"] is False
    assert set(req["properties"]) == set(ExecutionRequest.model_fields)
    assert "Limits" in req["$defs"] and "File" in req["$defs"]
    assert req["$defs"]["Limits"]["properties"]["memory_mb"]["maximum"] == 65536
    assert res["title"] == "ExecutionResult"
    assert set(res["required"]) == {"status", "execution_id", "language", "provider"}
    assert set(res["properties"]) == set(ExecutionResult.model_fields)
    assert res["$defs"]["Status"]["enum"] == [s.value for s in Status]
    json.dumps(req), json.dumps(res)  # serialisable
    serialisation = ExecutionResult.model_json_schema(mode="serialization")
    assert serialisation["title"] == "ExecutionResult"


def test_policy_capped_lowers_only_the_fields_the_caps_set() -> None:
    base = Policy()
    capped = base.capped(Limits(wall_time_s=5, memory_mb=100000 // 100))
    assert capped.maxima.wall_time_s == 5 and capped.maxima.memory_mb == 1000
    assert capped.maxima.pids == base.maxima.pids and capped.defaults == base.defaults
    assert base.capped(Limits(wall_time_s=1000)).maxima.wall_time_s == base.maxima.wall_time_s  # never raised
    assert base.capped(None) is base and base.capped(Limits()) is base
    assert capped.apply(Limits(wall_time_s=60)).wall_time_s == 5


def test_timeout_is_the_wall_time_and_the_cpu_time_unless_it_is_set() -> None:
    assert Limits.with_timeout(None) is None
    t = Limits.with_timeout(60)
    assert t is not None and (t.wall_time_s, t.cpu_time_s) == (60, 60)
    assert t.model_fields_set == {"wall_time_s", "cpu_time_s"}  # the rest take the operator's defaults
    t = Limits.with_timeout(60, Limits(cpu_time_s=5, wall_time_s=1, pids=3), memory_mb=64, network=None)
    assert t is not None and (t.wall_time_s, t.cpu_time_s, t.pids, t.memory_mb) == (60, 5, 3, 64)
    assert t.model_fields_set == {"wall_time_s", "cpu_time_s", "pids", "memory_mb"}
    t = Limits.with_timeout(None, Limits(pids=3), memory_mb=64)
    assert t is not None and t.model_fields_set == {"pids", "memory_mb"}
    with pytest.raises(pydantic.ValidationError):
        Limits.with_timeout(-1)


def test_none_is_nothing_for_stdin_args_env_and_files() -> None:
    r = ExecutionRequest(language="python", code="x", stdin=None, args=None, env=None, files=None)
    assert (r.stdin, r.args, r.env, r.files) == ("", [], {}, [])
    with pytest.raises(pydantic.ValidationError):
        ExecutionRequest(language="python", code=None, files=None)  # still: code or a file
