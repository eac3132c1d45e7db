"""What every generator reports."""

from dataclasses import dataclass


@dataclass
class GenResult:
    packets: int
    bytes: int
    seconds: float

    @property
    def pps(self) -> float:
        return self.packets / self.seconds if self.seconds > 0 else 0.0
