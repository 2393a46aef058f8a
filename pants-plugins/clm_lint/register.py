"""`pants lint` also checks formatting (ruff format) and types (mypy).

Pants 2.17 runs ruff only as a linter and mypy only under `pants check`; this in-repo plugin
adds both to `lint`, so one goal says whether a change is ready. Ruff's and MyPy's own
subsystems are reused: their versions, resolves, configs and `skip` options apply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pants.backend.python.lint.ruff.subsystem import Ruff, RuffFieldSet
from pants.backend.python.typecheck.mypy.rules import MyPyRequest
from pants.backend.python.typecheck.mypy.subsystem import MyPy, MyPyFieldSet
from pants.backend.python.util_rules.pex import PexRequest, VenvPex, VenvPexProcess
from pants.core.goals.check import CheckResults
from pants.core.goals.lint import LintResult, LintTargetsRequest
from pants.core.util_rules.config_files import ConfigFiles, ConfigFilesRequest
from pants.core.util_rules.partitions import Partition, PartitionerType, Partitions
from pants.core.util_rules.source_files import SourceFiles, SourceFilesRequest
from pants.engine.fs import Digest, MergeDigests
from pants.engine.process import FallibleProcessResult
from pants.engine.rules import Get, MultiGet, collect_rules, rule
from pants.util.logging import LogLevel
from pants.util.meta import classproperty
from pants.util.strutil import pluralize


class RuffFormatCheckRequest(LintTargetsRequest):
    field_set_type = RuffFieldSet
    tool_subsystem = Ruff
    partitioner_type = PartitionerType.DEFAULT_SINGLE_PARTITION

    @classproperty
    def tool_name(cls) -> str:
        return "ruff format"

    @classproperty
    def tool_id(cls) -> str:
        return "ruff-format"


@rule(desc="Check formatting with ruff format", level=LogLevel.DEBUG)
async def ruff_format_check(
    request: RuffFormatCheckRequest.Batch[RuffFieldSet, Any], ruff: Ruff
) -> LintResult:
    sources = await Get(SourceFiles, SourceFilesRequest(fs.source for fs in request.elements))
    ruff_pex, config = await MultiGet(
        Get(VenvPex, PexRequest, ruff.to_pex_request()),
        Get(ConfigFiles, ConfigFilesRequest, ruff.config_request(sources.snapshot.dirs)),
    )
    digest = await Get(Digest, MergeDigests((sources.snapshot.digest, config.snapshot.digest)))
    conf_args = [f"--config={ruff.config}"] if ruff.config else []
    result = await Get(
        FallibleProcessResult,
        VenvPexProcess(
            ruff_pex,
            argv=("format", "--check", "--diff", *conf_args, *sources.snapshot.files),
            input_digest=digest,
            description=f"Run ruff format --check on {pluralize(len(sources.snapshot.files), 'file')}.",
            level=LogLevel.DEBUG,
        ),
    )
    return LintResult.create(request, result, strip_chroot_path=True)


@dataclass(frozen=True)
class AllFieldSets:
    """Every target as one partition element: mypy checks the whole program at once (lint
    would otherwise split it into batches, each checked without the others' cache)."""

    field_sets: tuple[MyPyFieldSet, ...]


class MyPyLintRequest(LintTargetsRequest):
    field_set_type = MyPyFieldSet
    tool_subsystem = MyPy
    partitioner_type = PartitionerType.CUSTOM


@rule
async def partition_mypy(
    request: MyPyLintRequest.PartitionRequest[MyPyFieldSet], mypy: MyPy
) -> Partitions[AllFieldSets, Any]:
    if mypy.skip or not request.field_sets:
        return Partitions()
    return Partitions([Partition((AllFieldSets(tuple(request.field_sets)),), None)])


@rule(desc="Typecheck with mypy (lint)", level=LogLevel.DEBUG)
async def mypy_lint(request: MyPyLintRequest.Batch[AllFieldSets, Any]) -> LintResult:
    field_sets = [fs for element in request.elements for fs in element.field_sets]
    results = await Get(CheckResults, MyPyRequest(field_sets))
    exit_code = next((r.exit_code for r in results.results if r.exit_code != 0), 0)
    return LintResult(
        exit_code=exit_code,
        stdout="\n".join(r.stdout for r in results.results if r.stdout),
        stderr="\n".join(r.stderr for r in results.results if r.stderr),
        linter_name="mypy",
        partition_description=None,
    )


def rules():
    return [*collect_rules(), *RuffFormatCheckRequest.rules(), *MyPyLintRequest.rules()]
