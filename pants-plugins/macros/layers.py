# A BUILD-file prelude (pants.toml: build_file_prelude_globs): the layer rules every BUILD
# file of a layer states with one call. The layers, lowest first: contracts, policy, runtime,
# services, tools. A layer may import its own tree, the layers below it and the third-party
# requirements; its tests may also use the test kit (tests/kit, which may import services).
# Any other import fails the build (pants.backend.experimental.visibility).

CLM_PACKAGE = "//libs/clm/__init__.py"
THIRD_PARTY = "//reqs#*"
TEST_KIT = ("//tests/kit/**", "//tests/__init__.py")
CONTRACTS = "//libs/clm/contracts/**"
POLICY = "//libs/clm/policy/**"
RUNTIME = "//libs/clm/runtime/**"
LIBS = (CLM_PACKAGE, CONTRACTS, POLICY, RUNTIME)


def layer(*allowed):
    """The dependency rules of the BUILD file's tree: what it may import (path globs)."""
    base = (CLM_PACKAGE, THIRD_PARTY, *allowed)
    __dependencies_rules__(  # noqa: F821 - a BUILD-file symbol
        ("<python_tests>", base + TEST_KIT, "!*"),
        ("*", base, "!*"),
    )
