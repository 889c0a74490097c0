"""The sources package: backends import only the shared types, the environment is read once, traffic counted per run."""

from __future__ import annotations

import ast
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from btfm_core.tiles import S1_BANDS, S2_BANDS
from btfm_preprocessing.mosaic import S2Granule, mosaic_s1, mosaic_s2
from btfm_preprocessing.sources import (
    S1_SOURCES,
    S1_SPEC,
    S2_SPEC,
    SOURCE_VARIABLES,
    SourceEnvironment,
    SourceOptions,
)
from btfm_preprocessing.traffic import NetworkCounter
from tests.conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "btfm_preprocessing"
SOURCES = PACKAGE / "sources"
BACKENDS = ["stac_api", "sentinelhub", "asf", "hyp3"]
#: Modules the backends may use; none of them may import the sources package.
SHARED_HELPERS = ["credentials", "download", "encoding", "grd", "mosaic", "network", "period", "reader", "traffic"]


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in the file (function-local imports too), as absolute names."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}: relative import"  # absolute imports only in this package
            names.add(node.module or "")
            names |= {f"{node.module}.{alias.name}" for alias in node.names}  # ``from pkg import submodule``
    return names


def internal_imports(path: Path) -> set[str]:
    """The modules of ``btfm_preprocessing.sources`` (by short name, ``""`` for the package) that ``path`` imports."""
    prefix = "btfm_preprocessing.sources"
    found = set()
    for name in imported_modules(path):
        if name == prefix:
            found.add("")
        elif name.startswith(f"{prefix}."):
            module = name[len(prefix) + 1:].split(".")[0]
            if (SOURCES / f"{module}.py").is_file():
                found.add(module)
            else:  # ``from btfm_preprocessing.sources import Scene``: a name of the package itself
                found.add("")
    return found


@pytest.mark.parametrize("module", sorted(p.stem for p in SOURCES.glob("*.py") if p.stem != "__init__"))
def test_no_module_of_the_package_imports_the_registry(module: str) -> None:
    assert "" not in internal_imports(SOURCES / f"{module}.py")


def test_backends_import_only_the_types_and_the_shared_readers() -> None:
    graph = {module: internal_imports(SOURCES / f"{module}.py") for module in [*BACKENDS, "cog", "_types"]}
    assert graph["_types"] == set() and graph["cog"] == {"_types"}
    for backend in BACKENDS:
        assert graph[backend] <= {"_types", "cog"} | ({"asf"} if backend == "hyp3" else set()), backend
    assert graph["asf"] <= {"_types", "cog"}  # hyp3 builds on asf's search, never the other way round


@pytest.mark.parametrize("helper", SHARED_HELPERS)
def test_shared_helpers_never_import_the_sources(helper: str) -> None:
    assert not internal_imports(PACKAGE / f"{helper}.py")


@pytest.mark.parametrize("module", [f"btfm_preprocessing.sources.{name}" for name in [*BACKENDS, "cog", "_types"]]
                         + ["btfm_preprocessing.mosaic", "btfm_preprocessing.stack"])
def test_each_module_imports_first_in_a_fresh_interpreter(module: str) -> None:
    result = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr


def _reads_environment(path: Path) -> list[int]:
    """Lines of ``path`` that read ``os.environ`` / ``os.getenv``."""
    def reads(node: ast.AST) -> bool:
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os":
            return node.attr in ("environ", "getenv")
        if isinstance(node, ast.ImportFrom) and node.module == "os":
            return bool({alias.name for alias in node.names} & {"environ", "getenv"})
        return False

    return [node.lineno for node in ast.walk(ast.parse(path.read_text())) if reads(node)]


@pytest.mark.parametrize("path", [*sorted(SOURCES.glob("*.py")), *(PACKAGE / f"{h}.py" for h in SHARED_HELPERS),
                                  PACKAGE / "tile_tasks.py", PACKAGE / "stack.py"], ids=lambda p: p.stem)
def test_sources_and_helpers_never_read_the_environment(path: Path) -> None:
    assert _reads_environment(path) == []


def test_every_variable_a_backend_names_is_captured() -> None:
    from btfm_preprocessing.sources import asf, hyp3, sentinelhub

    named = {value for module in (asf, hyp3, sentinelhub) for key, value in vars(module).items()
             if key.endswith("_ENV") and isinstance(value, str)}
    assert len(named) == 9 and named <= set(SOURCE_VARIABLES)


def test_the_environment_travels_with_the_options(tmp_path: Path) -> None:
    secret = "cap7ured-Secret-value"
    environment = SourceEnvironment.capture({"SH_CLIENT_SECRET": f" {secret} ", "BTFM_HYP3_POLL_S": "5",
                                             "HOME": "/elsewhere", "EARTHDATA_PASSWORD": "  "})
    assert dict(environment) == {"BTFM_HYP3_POLL_S": "5"}  # only the declared variables; secrets kept apart
    assert environment.secret("SH_CLIENT_SECRET").reveal() == secret  # type: ignore[union-attr]
    assert environment.secret("EARTHDATA_PASSWORD") is None  # blank counts as unset
    with pytest.raises(ValueError, match="not a plain variable"):
        environment.get("SH_CLIENT_SECRET")  # a secret never comes out as a str
    options = SourceOptions(work_dir=tmp_path, environment=environment)
    copy = pickle.loads(pickle.dumps(options))  # what a Dask worker receives
    assert copy == options and hash(copy) == hash(options) and secret not in repr(options)
    # a fresh process that only unpickles the options (a worker) masks the secret in what it logs
    script = ("import pickle, sys; from btfm_core.redact import redact; pickle.loads(sys.stdin.buffer.read()); "
              f"print(redact('the server said {secret}'))")
    result = subprocess.run([sys.executable, "-c", script], input=pickle.dumps(options), cwd=REPO_ROOT,
                            capture_output=True, timeout=120)
    assert result.returncode == 0 and result.stdout.decode().strip() == "the server said ***", result.stderr


def test_sources_get_the_captured_environment_not_the_process_one(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BTFM_ASF_SEARCH_URL", "http://127.0.0.1:9/process-env")
    captured = SourceEnvironment.capture({"BTFM_ASF_SEARCH_URL": "http://127.0.0.1:9/captured"})
    source = S1_SOURCES["asf"](SourceOptions(work_dir=tmp_path, environment=captured))
    assert source.search_url == "http://127.0.0.1:9/captured"  # type: ignore[attr-defined]
    default = S1_SOURCES["asf"](SourceOptions(work_dir=tmp_path))
    assert default.search_url.startswith("https://")  # type: ignore[attr-defined]


def test_sensor_specs_are_the_tile_contract_and_the_mosaics_follow_them() -> None:
    assert (S2_SPEC.bands, S1_SPEC.bands) == (S2_BANDS, S1_BANDS)
    scl = np.full((3, 4), 4, np.uint8)
    granule = S2Granule(np.full((3, 4, 10), 1500, np.uint16), scl, boa_offset=True)
    day = mosaic_s2([granule], (3, 4))
    assert day is not None
    assert day.bands.dtype == S2_SPEC.dtype and day.bands.shape[-1] == len(S2_SPEC.bands) and (day.bands == 500).all()
    assert day.mask.all() and day.covered.all()
    codes = mosaic_s1([np.full((3, 4, 2), 0.1, np.float32)], (3, 4))
    assert codes is not None and codes.dtype == S1_SPEC.dtype and codes.shape[-1] == len(S1_SPEC.bands)
    assert mosaic_s1([np.full((3, 4, 2), np.nan, np.float32)], (3, 4)) is None  # no data: no day
    assert mosaic_s2([S2Granule(np.ones((3, 4, 10), np.uint16), np.zeros((3, 4), np.uint8), False)], (3, 4)) is None


def test_a_counter_counts_only_what_came_after_it() -> None:
    first = NetworkCounter()
    first.add(1000)
    second = NetworkCounter()
    second.add(10)
    assert first.total() is not None and second.total() is not None
    assert first.total() - second.total() == 990  # type: ignore[operator]


def test_gdal_statistics_are_on_inside_the_scoped_settings() -> None:
    """In a fresh process (GDAL decides once, at its first network access) the scoped option is enough."""
    script = """
from btfm_core.grid import Grid
from btfm_core.loopback import LoopbackServer
from btfm_preprocessing.reader import gdal_env, read_on_grid
from btfm_preprocessing.traffic import NetworkCounter
from rasterio.enums import Resampling
from affine import Affine
from tests.conftest import DEMO_DIR

grid = Grid("EPSG:32631", Affine(10, 0, 664000, 0, -10, 5612120), 100, 100)
with LoopbackServer(DEMO_DIR) as srv:
    traffic = NetworkCounter()
    with gdal_env():
        read_on_grid(f"{srv.url}/sentinel-2-l2a/S2_DEMO_BE_20210501/red.tif", grid, Resampling.nearest, "uint16", 0)
    print(traffic.total(), srv.total_bytes_served)
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    counted, served = (int(value) for value in result.stdout.split())
    assert served > 0 and counted == served
