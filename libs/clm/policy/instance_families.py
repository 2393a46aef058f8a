"""AWS instance families grouped into CPU generation sets.

Live migration restores a process on another CPU; it must find the same instruction-set
features there. Families in one set share a CPU generation (seed 000: "m5 -> c5, r5, i5
compatible; r4, c4, m4 not"; seed 002: "m3 with c3, c5 with r5, m5; never c3 with c5").
"""

from __future__ import annotations

# set id -> (description, families)
GENERATION_SETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "intel-gen3": ("Intel Sandy/Ivy Bridge (3rd generation)", ("m3", "c3", "r3", "i2", "cr1", "hs1", "g2")),
    "intel-gen4": (
        "Intel Haswell/Broadwell (4th generation)",
        ("m4", "c4", "r4", "i3", "d2", "h1", "x1", "x1e", "t2", "p2", "p3", "g3", "f1"),
    ),
    "intel-gen5": (
        "Intel Skylake/Cascade Lake (5th generation)",
        (
            "m5",
            "m5d",
            "m5n",
            "m5dn",
            "m5zn",
            "c5",
            "c5d",
            "c5n",
            "r5",
            "r5d",
            "r5n",
            "r5dn",
            "r5b",
            "i5",
            "i3en",
            "d3",
            "d3en",
            "z1d",
            "t3",
            "g4dn",
            "p3dn",
            "inf1",
        ),
    ),
    "amd-gen5": (
        "AMD EPYC Naples/Rome (5th generation, 'a' families)",
        ("m5a", "m5ad", "c5a", "c5ad", "r5a", "r5ad", "t3a", "g4ad"),
    ),
    "intel-gen6": (
        "Intel Ice Lake (6th generation)",
        (
            "m6i",
            "m6id",
            "m6in",
            "m6idn",
            "c6i",
            "c6id",
            "c6in",
            "r6i",
            "r6id",
            "r6in",
            "r6idn",
            "x2idn",
            "x2iedn",
            "i4i",
        ),
    ),
    "amd-gen6": ("AMD EPYC Milan (6th generation)", ("m6a", "c6a", "r6a", "hpc6a")),
    "intel-gen7": (
        "Intel Sapphire Rapids (7th generation)",
        ("m7i", "m7i-flex", "c7i", "c7i-flex", "r7i", "r7iz", "i7ie", "m7i-metal"),
    ),
    "amd-gen7": ("AMD EPYC Genoa (7th generation)", ("m7a", "c7a", "r7a", "hpc7a")),
    "intel-gen8": ("Intel Granite Rapids (8th generation)", ("m8i", "m8i-flex", "c8i", "r8i")),
    "amd-gen8": ("AMD EPYC Turin (8th generation)", ("m8a", "c8a", "r8a")),
    "graviton1": ("AWS Graviton (arm64)", ("a1",)),
    "graviton2": (
        "AWS Graviton2 (arm64)",
        ("m6g", "m6gd", "c6g", "c6gd", "c6gn", "r6g", "r6gd", "t4g", "x2gd", "im4gn", "is4gen", "g5g"),
    ),
    "graviton3": ("AWS Graviton3 (arm64)", ("m7g", "m7gd", "c7g", "c7gd", "c7gn", "r7g", "r7gd", "hpc7g")),
    "graviton4": ("AWS Graviton4 (arm64)", ("m8g", "m8gd", "c8g", "c8gd", "r8g", "r8gd", "x8g", "i8g")),
}

_SET_OF_FAMILY: dict[str, str] = {
    family: set_id for set_id, (_, families) in GENERATION_SETS.items() for family in families
}
if len(_SET_OF_FAMILY) != sum(len(f) for _, f in GENERATION_SETS.values()):
    raise AssertionError("an instance family is listed in two generation sets")


def family(instance_type: str) -> str:
    """'m5.xlarge' -> 'm5'; 'm7i-flex.large' -> 'm7i-flex'."""
    return instance_type.split(".", 1)[0].lower()


def generation_set(instance_type_or_family: str) -> str | None:
    return _SET_OF_FAMILY.get(family(instance_type_or_family))


def compatible_families(base_family: str) -> list[str]:
    """The compatible instance helper: families that can be mixed with `base_family` in a
    live-migration node template (the base family included), sorted."""
    set_id = generation_set(base_family)
    if set_id is None:
        raise KeyError(f"unknown instance family {base_family!r}")
    return sorted(GENERATION_SETS[set_id][1])
