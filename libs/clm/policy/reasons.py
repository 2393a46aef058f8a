"""Machine-readable reasons a user can read."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reason:
    # Stable and machine-readable, e.g. "tty", "gpu", "arch-mismatch".
    code: str
    # One sentence for people, naming the object at fault.
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"
