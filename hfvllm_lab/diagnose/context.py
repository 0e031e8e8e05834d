"""What every lens of one diagnosis shares: the sampled sequences, the truth and the floors on their
decode positions, the Session's own arms (computed once), child engines, and how an arm is judged."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from hfvllm_lab.mismatch import outside_band_shares
from hfvllm_lab.noise import distribution_diff
from hfvllm_lab.paths.hf_scoring import decode_step_rows
from hfvllm_lab.results.diagnosis import ArmResult
from hfvllm_lab.results.teacher import DistributionDiff
from hfvllm_lab.rules import noise_verdict

if TYPE_CHECKING:
    from hfvllm_lab.session import Session

TRUTH = "transformers (float32)"


@dataclass
class Shared:
    session: "Session"
    sequences: list[list[int]]
    prompt_lengths: list[int]
    truth: list  # per sequence, continuation rows teacher-forced in float32
    floor_rows: dict[str, list] = field(default_factory=dict)  # floor name -> continuation rows (session dtype)
    edits: bytes | None = None  # the Session's edits, pickled for child engines
    edit_note: str = ""
    speed_prompts: list[list[int]] = field(default_factory=list)
    isolated: bool = False  # transformers must run in a child process (patched classes here)
    _session_arms: dict[str, dict] = field(default_factory=dict)
    _session_speed: float | None = None
    _dtype_floors: dict[str, dict[str, list]] = field(default_factory=dict)

    # -- positions -----------------------------------------------------------------------
    @property
    def targets(self) -> list[list[int]]:
        """The tokens decode steps predict: each continuation after its first token (row 0 came from
        the prefill)."""
        return [list(q[n + 1:]) for q, n in zip(self.sequences, self.prompt_lengths)]

    @property
    def positions(self) -> int:
        return sum(len(t) for t in self.targets)

    def floors(self, truth=None, floor_rows=None, targets=None, dtype: str | None = None) -> list[DistributionDiff]:
        """The floors on the given positions (default: every sequence's decode positions, in the
        session's dtype; another `dtype`'s floors are measured on first use)."""
        dtype = dtype or self.session.dtype
        if dtype == "float32":
            return []
        truth = self.truth if truth is None else truth
        if floor_rows is None:
            floor_rows = self.floor_rows if dtype == self.session.dtype else self._floor_rows_for(dtype)
        targets = self.targets if targets is None else targets
        return [distribution_diff(name, TRUTH, decode_step_rows(truth), decode_step_rows(r), targets)
                for name, r in floor_rows.items()]

    def _floor_rows_for(self, dtype: str) -> dict[str, list]:
        if dtype not in self._dtype_floors:
            from hfvllm_lab.paths.hf_scoring import HfScoreRequest, ScorePass, run_hf_scoring_where_possible

            passes = {f"transformers ({dtype}, teacher-forced)": ScorePass(dtype, "teacher"),
                      f"transformers ({dtype}, KV-cache decode)": ScorePass(dtype, "decode")}
            from hfvllm_lab.compare import beside_engine

            s = self.session
            request = HfScoreRequest(s.model_dir, s.device, s.hf_attention, self.sequences, self.prompt_lengths,
                                     tuple(passes.values()), s.trust_remote_code)
            hf, _ = beside_engine(s, lambda: run_hf_scoring_where_possible(request, self.isolated))
            self._dtype_floors[dtype] = {name: hf.outputs[p] for name, p in passes.items()}
        return self._dtype_floors[dtype]

    # -- judging -------------------------------------------------------------------------
    def judge(self, name: str, setting: str, rows: list, *, seconds: float = 0.0, tokens_per_second=None,
              notes=(), truth=None, floors=None, targets=None, dtype: str | None = None) -> ArmResult:
        """An arm's continuation rows against the truth on decode positions, relative to the floors of
        the arm's dtype (default the session's)."""
        dtype = dtype or self.session.dtype
        truth = self.truth if truth is None else truth
        targets = self.targets if targets is None else targets
        floors = self.floors(dtype=dtype) if floors is None else floors
        diff = distribution_diff(name, TRUTH, decode_step_rows(truth), decode_step_rows(rows), targets)
        verdict = noise_verdict(diff, floors, dtype)
        shown = floors
        if not floors and dtype == "float32" and self.session.dtype != "float32" and targets is self.targets:
            shown = self.floors()  # a float32 arm is judged by |dlogp|; shown beside the session's floor
        floor = max(shown, key=lambda f: f.kl_mean, default=None)
        return ArmResult(name, setting, diff, floor, verdict,
                         bands(decode_step_rows(truth), decode_step_rows(rows), targets),
                         tokens_per_second, seconds, list(notes))

    # -- the Session's own engine ------------------------------------------------------------
    def session_arm(self, composition: str) -> dict:
        """Forced decoding of the sequences on the Session's engine, once per composition."""
        if composition not in self._session_arms:
            from hfvllm_lab.diagnose.jobs import decode_arm

            self._session_arms[composition] = decode_arm(self.session.engine, self.sequences, self.prompt_lengths,
                                                         composition)
        return self._session_arms[composition]

    def session_speed(self) -> float:
        if self._session_speed is None:
            from hfvllm_lab.diagnose.jobs import speed

            self._session_speed = speed(self.session.engine, self.speed_prompts)
        return self._session_speed

    def session_judged(self, name: str, composition: str = "batch") -> ArmResult:
        arm = self.session_arm(composition)
        return self.judge(name, f"this Session's engine, {composition}", arm["rows"], seconds=arm["seconds"],
                          tokens_per_second=self.session_speed())

    # -- child engines -----------------------------------------------------------------------
    def child(self, kind: str = "decode", composition: str = "batch", env: dict | None = None,
              extra: dict | None = None, keep_extra: bool = True, **changes: Any) -> dict:
        """One arm on a fresh engine in a child process: the Session's settings with `changes` (EngineSettings
        fields) and `extra` engine_args (merged into the Session's, or alone with keep_extra=False), the
        Session's edits applied. Refused (ProbeUnavailableError) when an edit cannot travel or does not
        apply there: the arm would differ from the Session in more than the flipped factor."""
        from hfvllm_lab.diagnose.jobs import child_arm
        from hfvllm_lab.errors import ProbeUnavailableError
        from hfvllm_lab.paths.isolated import run_isolated

        if self.edit_note:
            raise ProbeUnavailableError(self.edit_note)
        settings = self.session.settings
        merged = {**(settings.extra if keep_extra else {}), **(extra or {})}
        settings = replace(settings, extra=merged, **changes)
        out, notes = run_isolated(settings, child_arm, kind, self.sequences, self.prompt_lengths, composition,
                                  self.speed_prompts, edits=self.edits, env=env)
        if notes:
            raise ProbeUnavailableError(f"the Session's edits do not apply to this engine: {'; '.join(notes)}")
        return out

    def child_judged(self, name: str, setting: str, **kwargs: Any) -> ArmResult:
        """A child-engine arm, judged in its own dtype (the `dtype` change, else the session's). An arm that
        cannot run says why ("could not run" for a refusal, "failed" for anything else); the lens goes on."""
        begin = time.perf_counter()
        try:
            out = self.child(**kwargs)
        except Exception as exc:  # noqa: BLE001 - recorded on the arm, and a non-refusal fails the lens
            return ArmResult(name, setting, notes=[arm_failure(exc)], seconds=time.perf_counter() - begin)
        return self.judge(name, f"{setting} ({out['model_class'].rsplit('.', 1)[-1]})", out["rows"],
                          seconds=out["seconds"], tokens_per_second=out["tokens_per_second"],
                          dtype=kwargs.get("dtype"))


def arm_failure(exc: BaseException) -> str:
    """'could not run: ...' for the toolkit's or vLLM's refusals, 'failed: ...' (with where) otherwise."""
    import traceback

    from hfvllm_lab.errors import LabError, first_line, root_cause

    root = root_cause(exc)
    if isinstance(root, LabError) or isinstance(exc, LabError):
        return f"could not run: {type(root).__name__}: {first_line(root, 300)}"
    where = traceback.extract_tb(root.__traceback__)[-1] if root.__traceback__ else None
    at = f" at {where.filename.rsplit('/', 1)[-1]}:{where.lineno}" if where else ""
    return f"failed: {type(root).__name__}: {first_line(root, 300)}{at}"


def bands(truth: list, rows: list, targets: list[list[int]]) -> dict[str, float]:
    """Share of target tokens whose ratio p_truth / p_arm lies outside RL's bands."""
    ratios = []
    for t, r, want in zip(truth, rows, targets):
        for j, token in enumerate(want):
            ratios.append(float(t[j, token]) - float(r[j, token]))
    return outside_band_shares(ratios)


__all__ = ["Shared", "TRUTH", "bands"]
