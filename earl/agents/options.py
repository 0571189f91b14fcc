"""What a user picks for the agent pipeline, declared once.

Each `AgentOptions` field carries its command-line flag's help text (and choices, metavar) in its
metadata: the CLI turns every field into a flag (`step_temperature` -> `--step-temperature`), a study
recipe's `agent:` section loads into the same dataclass, and both get the same defaults and checks.
This module stays light (no torch), so that `earl --help` can build the flags from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from earl.agents.sequencer import SEQUENCERS

VERIFIERS = ("learned",)  # `verifier`: a whole oracle-free closed loop named at once
# what `verifier: learned` sets where the option still has its default (editor calls stay <= 4 per edit on average)
LEARNED_LOOP = {"check": "learned", "plan_judge": "learned", "writer": "plan", "plan_votes": 16,
                "plan_vote_by": "outcome", "plans": 2, "attempts": 2, "repairs": 1,
                "rrm": "checkpoints/shapes-rrm-refresh"}  # the reward model refreshed on the policy's own images
PLAN_VOTES = ("text", "outcome")  # what sampled plans are counted by (`earl.agents.outcomes`)
CHECKS = ("none", "oracle", "rrm", "learned")  # how each step is verified (a failing one is resampled)
PLAN_JUDGES = ("oracle", "rrm", "learned")  # who judges the final image of a candidate plan
# The editor's decoding schedules: `earl.generate.SCHEDULES`, named here too because this module loads no
# torch (tests/test_cli.py keeps the two equal).
SCHEDULES = ("sequential", "jacobi")
DECODING_FIELDS = ("schedule", "window")  # the editor's own flags: every command that edits has them


def schedule_problem(schedule: str, window: int | None, names: tuple[str, str] = ("schedule", "window")) -> str | None:
    """What is wrong with a schedule and window, named by `names` (fields, or the CLI's flags), or None.
    The grid-dependent check (a window beyond the image) is `earl.generate.jacobi.check_schedule`'s."""
    s, w = names
    if schedule not in SCHEDULES:
        return f"{s} {schedule!r}: expected one of {', '.join(SCHEDULES)}"
    if window is None:
        return f"{s} jacobi needs {w} N (the codes fed and verified per forward, N >= 1)" if schedule == "jacobi" else None
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        return f"{w} {window!r}: expected an integer >= 1 (the codes fed and verified per forward)"
    if schedule == "sequential":
        return f"{w} {window} applies to {s} jacobi; {s} sequential decodes one code per forward"
    return None


def option(default, help: str | None = None, choices=None, metavar: str | None = None):
    """A field with what its flag shows in `--help`."""
    return field(default=default, metadata={"help": help, "choices": choices, "metavar": metavar})


def _one_of(choices) -> str:
    return ", ".join(choices[:-1]) + " or " + choices[-1]


@dataclass
class AgentOptions:
    check: str = option("none", choices=CHECKS,
                        help="closed loop: verify each step (ShapesEdit oracle, the reasoning reward model, or "
                             "learned: that model on a principle writer's points, no answer read) and resample a "
                             "failing step")
    attempts: int = option(4, help="with --check: tries per step (best-of-k)")
    step_temperature: float = option(1.0, help="with --check: temperature of resampled steps")
    rrm: str = option("checkpoints/shapes-rrm-lenient", help="with --check rrm: the reward model")
    rrm_threshold: float = option(0.9, help="with --check rrm: E[points]/10 needed to pass")
    plan_votes: int = option(0, metavar="K",
                             help="self-consistency: also sample K plans and keep the one written most often (0: "
                                  "greedy plan)")
    plan_temperature: float = option(1.0, help="with --plan-votes: temperature of sampled plans")
    plan_vote_by: str = option("text", choices=PLAN_VOTES,
                               help="with --plan-votes: count plans by their text, or by outcome: each applied to "
                                    "the scene parsed from the source image and counted by the scene it predicts "
                                    "(plans that do not apply cast no vote; ShapesEdit images)")
    plans: int = option(1, metavar="M",
                        help="with --plan-votes and --plan-judge: carry out up to M candidate plans, most-written "
                             "first, until the judge passes the final image")
    plan_judge: str | None = option(None, choices=PLAN_JUDGES,
                                    help="with --plans: judge of the final image against the whole instruction "
                                         "(ShapesEdit oracle success, or the reasoning reward model's E[points]/10 "
                                         ">= --rrm-threshold)")
    writer: str | None = option(None, metavar="DIR|plan|plan:DIR",
                                help="with --check or --plan-judge learned: the principle writer whose points the "
                                     "reward model judges, in place of points read from the answer: a learned "
                                     "writer's directory (`earl train principle-writer`), or plan: the decomposer's "
                                     "plan applied to the scene parsed from the source image (a tool-using writer; "
                                     "plan:DIR for a decomposer directory other than the bundled one)")
    repairs: int = option(0, metavar="R",
                          help="critique and repair: up to R rounds in which the verifier's failing points (of "
                               "--plan-judge, else --check: rrm or learned) go back to the decomposer with the "
                               "current image, and the corrective plan is kept only when the verifier scores it "
                               "higher")
    verifier: str | None = option(None, choices=VERIFIERS,
                                  help="the oracle-free closed loop in one flag: learned = "
                                       + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in LEARNED_LOOP.items())
                                       + ", each unless given otherwise: the bundled reward model judging points its "
                                         "principle writer wrote from the source image and the instruction only")
    sequencer: str = option("keep", choices=tuple(SEQUENCERS))
    sequencer_base_url: str | None = option(None, help="with --sequencer chat: an OpenAI-compatible server's URL "
                                                      "(default: $EARL_SEQUENCER_BASE_URL)")
    sequencer_model: str | None = option(None, help="with --sequencer chat: the model it serves (default: "
                                                   "$EARL_SEQUENCER_MODEL, else the first it lists)")
    fallback: bool = option(False, help="when the plan fails, give the editor the instruction itself (the failure "
                                        "is still counted)")
    schedule: str = option("sequential", choices=SCHEDULES,
                           help="the editor's decoding: sequential (one image code per forward) or jacobi (--window "
                                "codes guessed and verified per forward: the same greedy image in fewer forwards)")
    window: int | None = option(None, metavar="N", help="with --schedule jacobi: codes fed and verified per forward")

    def __post_init__(self):
        """ValueError, so that a recipe's bad agent options are reported with its file and field (the CLI
        reports them as a usage error)."""
        if self.verifier not in (None, *VERIFIERS):
            raise ValueError(f"verifier must be {_one_of(VERIFIERS)}, got {self.verifier!r}")
        if self.verifier == "learned":
            defaults = {f.name: f.default for f in fields(self)}
            for name, value in LEARNED_LOOP.items():
                if getattr(self, name) == defaults[name]:
                    setattr(self, name, value)
            if "oracle" in (self.check, self.plan_judge) or "rrm" in (self.check, self.plan_judge):
                raise ValueError("verifier: learned reads no answer; it cannot be combined with an oracle or rrm "
                                 "check or plan judge (they read the scene graphs)")
        if self.plan_vote_by not in PLAN_VOTES:
            raise ValueError(f"plan_vote_by must be {_one_of(PLAN_VOTES)}, got {self.plan_vote_by!r}")
        if self.repairs < 0:
            raise ValueError(f"repairs must be >= 0, got {self.repairs}")
        if self.repairs and not ({self.check, self.plan_judge} & {"rrm", "learned"}):
            raise ValueError("repairs need a verifier that judges by points: check or plan_judge rrm or learned")
        if self.check not in CHECKS:
            raise ValueError(f"check must be {_one_of(CHECKS)}, got {self.check!r}")
        if self.plan_judge not in (None, *PLAN_JUDGES):
            raise ValueError(f"plan_judge must be {_one_of(PLAN_JUDGES)}, got {self.plan_judge!r}")
        if "learned" in (self.check, self.plan_judge) and not self.writer:
            raise ValueError("the learned verifier needs writer: a principle writer directory (earl.train.writer), "
                             "plan or plan:DIR")
        if self.writer is not None and self.writer.startswith("plan:") and not self.writer[5:]:
            raise ValueError("writer plan:DIR needs the decomposer directory after the colon (or plan alone for "
                             "the bundled decomposer)")
        if (self.plans > 1) != (self.plan_judge is not None) or (self.plans > 1 and not self.plan_votes):
            raise ValueError("choosing among sampled plans by judging the results needs plans M (> 1), plan_votes K "
                             "and plan_judge together (CLI: --plans, --plan-votes, --plan-judge)")
        if self.sequencer not in SEQUENCERS:
            raise ValueError(f"sequencer must be one of {', '.join(SEQUENCERS)}, got {self.sequencer!r}")
        if (problem := schedule_problem(self.schedule, self.window)) is not None:
            raise ValueError(problem)
        if self.sequencer != "chat" and (self.sequencer_base_url or self.sequencer_model):
            raise ValueError("sequencer_base_url and sequencer_model apply to the chat sequencer only (sequencer: chat)")
