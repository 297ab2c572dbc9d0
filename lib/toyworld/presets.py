"""Sizes of the toy world: ``toy`` (the default book) and ``micro`` (tests, seconds).

NSD itself: 8 subjects, 10,000 images each (1,000 shared), 3 repeats, 40 sessions of
12 runs with 62-63 stimulus trials in 75 slots (750 trials per session), 425 px images.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class WorldPreset:
    """Size of a simulated experiment.

    Parameters
    ----------
    name : str
    n_subjects : int
        Subjects (all see the shared images).
    n_images : int
        Images per subject, shared ones included.
    n_shared : int
        Shared (test) images, the first ``n_shared`` columns of ``subjectim``.
    n_repeats : int
        Presentations of every image.
    n_sessions, n_runs, n_slots : int
        Sessions, runs per session, slots per run (stimulus trials + blanks).
    trials_per_run : tuple of int
        Stimulus trials per run, cycled over the runs of a session (NSD: 63, 62).
    image_size : int
        Width and height of the stimuli in pixels.
    voxel_size : float
        Voxel size of the MNI grid in mm.
    """

    name: str
    n_subjects: int
    n_images: int
    n_shared: int
    n_repeats: int
    n_sessions: int
    n_runs: int
    n_slots: int
    trials_per_run: tuple
    image_size: int = 64
    voxel_size: float = 4.0

    @property
    def trials_per_session(self) -> int:
        k = len(self.trials_per_run)
        return sum(self.trials_per_run[r % k] for r in range(self.n_runs))

    @property
    def n_stimuli(self) -> int:
        """Images in the stimulus brick: shared ones plus every subject's own."""
        return self.n_shared + self.n_subjects * (self.n_images - self.n_shared)

    def check(self) -> WorldPreset:
        """Raise ValueError if the design does not add up."""
        total = self.n_sessions * self.trials_per_session
        if total != self.n_images * self.n_repeats:
            raise ValueError(
                f"preset {self.name!r}: {self.n_sessions} sessions x {self.trials_per_session} "
                f"trials = {total}, but {self.n_images} images x {self.n_repeats} repeats = "
                f"{self.n_images * self.n_repeats}; make them equal."
            )
        if max(self.trials_per_run) > self.n_slots - 2:
            raise ValueError(f"preset {self.name!r}: runs need at least 2 blank slots")
        if not 0 < self.n_shared < self.n_images:
            raise ValueError(f"preset {self.name!r}: need 0 < n_shared < n_images")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    "toy": WorldPreset(name="toy", n_subjects=2, n_images=1250, n_shared=100, n_repeats=3,
                       n_sessions=5, n_runs=12, n_slots=75, trials_per_run=(63, 62)),
    "micro": WorldPreset(name="micro", n_subjects=2, n_images=150, n_shared=20, n_repeats=3,
                         n_sessions=3, n_runs=3, n_slots=56, trials_per_run=(50,)),
}


def get_preset(name: str) -> WorldPreset:
    """Return the preset called ``name`` (``"toy"`` or ``"micro"``), checked."""
    try:
        return PRESETS[name].check()
    except KeyError as err:
        raise ValueError(
            f"unknown toy-world preset {name!r}; expected one of {sorted(PRESETS)}"
        ) from err
