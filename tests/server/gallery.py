"""What the `gallery_runs` fixture (conftest.py) gives: the run ids of each kind of run;
and the names of the views by family.

A module of its own so that tests can import it: `conftest` names a module in
each test folder, and which one an import finds depends on collection order.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GalleryRuns:
    mlp: str  # digits MLP 64-32-16-10 with ReLUs: probes at steps 25, 50, 75, 100
    cnn: str  # digits as 1x8x8 images: Conv2d(1, 8) + ReLU + MaxPool + Linear
    empty: str  # created, nothing sent
    single: str  # one step of everything that a batch carries
    odd: str  # NaN and infinite statistics and scalars
    probe_steps: tuple[int, ...] = (25, 50, 75, 100)

    @property
    def all(self) -> dict[str, str]:
        return {"mlp": self.mlp, "cnn": self.cnn, "empty": self.empty, "single": self.single,
                "odd": self.odd}  # fmt: skip


# The views of the gallery by family, as their tests take them.
PROBE_VIEWS = ("scatter", "embedding", "class-means", "confusion")
DETAIL_VIEWS = ("layer-outputs", "feature-maps", "attributions", "model")
STATISTICS_VIEWS = ("distributions", "histogram", "gradient-flow", "weight-change", "dead-units")
