"""The schedule of a distillation run: its phases, its step totals and every epoch's learning rate.

One object answers "how many steps?" and "at what rate?" for the loop, for ``crdtool distill``'s
progress bar and for resume, so none of them recounts phases on its own. The rules are written out in
docs/method.md, "Schedules".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: The three schedules: an online CycleGAN teacher in rounds, Pix2Pix teacher and student stepped
#: together, and a pretrained (frozen) teacher with student epochs only.
KINDS = ("cyclegan", "pix2pix", "pretrained")
#: Added to a student epoch's index to key its batches: other crops and orders than the teacher epoch's.
STUDENT_EPOCH_KEY = 1_000_000


@dataclass
class Phase:
    kind: str  # "teacher" | "student" | "joint"
    epochs: int

    @property
    def trains_student(self) -> bool:
        return self.kind != "teacher"


@dataclass
class Progress:
    """Counters saved in every checkpoint; together with the seed they fix all remaining randomness."""

    phase: int = 0
    epoch_in_phase: int = 0
    batch_in_epoch: int = 0
    teacher_epoch: int = 0
    student_epoch: int = 0
    step: int = 0
    teacher_steps: int = 0
    student_steps: int = 0
    skipped_steps: int = 0
    best_fid: dict[str, float] = field(default_factory=dict)

    def load(self, saved: dict[str, Any]) -> None:
        """A checkpoint's counters, taken in place: the step strategies hold this very object."""
        self.__dict__.update(Progress(**saved).__dict__)

    @property
    def at_start(self) -> bool:
        return self.step == 0 and self.phase == 0 and self.batch_in_epoch == 0 and self.epoch_in_phase == 0

    def end_epoch(self, phase: Phase) -> None:
        self.batch_in_epoch = 0
        self.epoch_in_phase += 1
        if phase.kind in ("teacher", "joint"):
            self.teacher_epoch += 1
        if phase.kind in ("student", "joint"):
            self.student_epoch += 1

    def epoch_of(self, phase: Phase) -> int:
        """The epoch a phase's batches belong to: the teacher's count, or in a student phase the student's."""
        return self.student_epoch if phase.kind == "student" else self.teacher_epoch


def linear_decay(epoch: int, constant: int, decay: int) -> float:
    """The reference's 'linear' LambdaLR factor for 0-based ``epoch``.

    The reference computes ``1 - max(0, epoch + epoch_count - n_epochs) / (n_epochs_decay + 1)`` with
    epoch_count = 1, so with 100 + 100 epochs the factor is 1.0 through epoch index 99, 0.990 at
    index 100 (the 101st epoch) and 0.0099 at index 199 (the 200th).
    """
    return 1.0 - max(0, epoch + 1 - constant) / float(decay + 1)


@dataclass(frozen=True)
class Schedule:
    """Phases and learning rates of one run; ``epoch_len`` is batches per epoch on each rank."""

    kind: str
    phases: tuple[Phase, ...]
    epoch_len: int
    lr: float
    teacher_epochs: int
    teacher_epochs_decay: int
    max_student_steps: int | None = None

    @classmethod
    def plan(cls, kind: str, train: Any, epoch_len: int) -> "Schedule":
        """``train`` is a recipe's [train] section."""
        if kind not in KINDS:
            raise ValueError(f"unknown schedule {kind!r}; expected one of {KINDS}")
        total = train.teacher_epochs + train.teacher_epochs_decay
        if kind == "pretrained":
            phases = [Phase("student", train.student_epochs)]
        elif kind == "pix2pix":
            phases = [Phase("joint", total)]
        else:
            phases, done = [], 0
            while done < total:
                n = min(train.round_epochs, total - done)
                phases.append(Phase("teacher", n))
                done += n
                if train.student_epochs_per_round > 0:
                    phases.append(Phase("student", train.student_epochs_per_round))
        return cls(kind, tuple(phases), epoch_len, train.lr, train.teacher_epochs, train.teacher_epochs_decay,
                   train.max_steps)

    @property
    def total_steps(self) -> int:
        """Steps of the whole schedule (a joint step is one step), ignoring ``train.max_steps``."""
        return sum(ph.epochs * self.epoch_len for ph in self.phases)

    @property
    def student_epochs(self) -> int:
        return sum(ph.epochs for ph in self.phases if ph.trains_student)

    @property
    def total_student_steps(self) -> int:
        """Student steps of the whole schedule, ignoring ``train.max_steps`` (as the learning rates do)."""
        return self.student_epochs * self.epoch_len

    def planned_steps(self) -> int:
        """Steps (teacher and student) until the run ends: the schedule's end or the ``max_steps``-th student step."""
        cap = self.max_student_steps
        if cap is None:
            return self.total_steps
        steps = students = 0
        for ph in self.phases:
            n = ph.epochs * self.epoch_len
            if ph.trains_student and students + n >= cap:
                return steps + cap - students
            steps += n
            students += n if ph.trains_student else 0
        return steps

    def cap_reached(self, progress: Progress) -> bool:
        return self.max_student_steps is not None and progress.student_steps >= self.max_student_steps

    def finished(self, progress: Progress) -> bool:
        """Nothing left to do: every phase is done, or ``train.max_steps`` student steps are."""
        return progress.phase >= len(self.phases) or self.cap_reached(progress)

    def learning_rates(self, phase: Phase, progress: Progress) -> tuple[float, float]:
        """(teacher and discriminators, student) learning rates for the epoch ``progress`` is in."""
        lr_t = self.lr * linear_decay(progress.teacher_epoch, self.teacher_epochs, self.teacher_epochs_decay)
        if phase.kind == "joint":
            return lr_t, lr_t
        if self.kind == "pretrained":  # no teacher epochs: the student's own schedule, half constant, half decay
            n = self.student_epochs
            return lr_t, self.lr * linear_decay(progress.student_epoch, n // 2, n - n // 2)
        # online CycleGAN teacher: as in the reference, the student follows the teacher's schedule;
        # a student round uses the rate of the teacher epoch it follows
        return lr_t, self.lr * linear_decay(max(progress.teacher_epoch - 1, 0), self.teacher_epochs,
                                            self.teacher_epochs_decay)
