"""Choosing a plan for a deployment: gather what the search needs, search, and explain the choice.

`PlanInputs.gather` is the one place that fetches the cloud's profile, probes the link and measures the codecs'
losses; the command line (`edgesplit plan`, `edgesplit demo`) and the edge's runtime all go through it, then
through `plan_for`.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Protocol

from partitioner.costmodel import Workload
from partitioner.search import Choice, Constraints, SearchResult, search
from profiling.acceptance import DraftProfile
from profiling.codec_loss import codec_losses
from profiling.link_estimator import Link, LinkEstimator, probe_link
from profiling.profile import Profile
from splitcore.defaults import MIB
from splitcore.errors import PlanError
from splitcore.loading import LoadedModel

log = logging.getLogger(__name__)


class CloudPeer(Protocol):
    """What planning asks of the cloud (the edge's `CloudClient` is one): its measured profile, timed probes."""

    def profile(self) -> dict: ...

    def probe(self, nbytes: int) -> float: ...


@dataclass(frozen=True)
class PlanInputs:
    """What a search needs besides the workload and the operator's limits."""

    edge: Profile
    cloud: Profile
    link: Link
    codec_loss: dict[str, float] = field(default_factory=dict)  # codec -> perplexity ratio - 1; empty: not measured
    drafts: DraftProfile | None = None  # measured acceptance of the edge's draft: the search weighs speculation

    @classmethod
    def gather(cls, edge: Profile, cloud: Profile | CloudPeer, link: Link | LinkEstimator,
               losses_of: LoadedModel | None = None, drafts: DraftProfile | None = None) -> PlanInputs:
        """Fetch the cloud's profile, probe the link and measure the codec losses, as far as each is asked for.

        Args:
            edge: this device's profile (measured or loaded, slowed as emulated).
            cloud: the cloud's profile, or the cloud to fetch it from.
            link: a known link, or the estimator to probe it into (then `cloud` must be the cloud itself).
            losses_of: the model whose codec losses a codec accuracy limit needs; None: not measured.
            drafts: the edge's draft's measured acceptance (`profiling.acceptance.measure_drafts`), when it may
                speculate; None: plans are weighed decoding plainly.

        Raises:
            CloudUnavailableError: the cloud cannot be reached.
        """
        if isinstance(cloud, Profile):
            assert not isinstance(link, LinkEstimator), "probing the link needs the cloud, not only its profile"
            cloud_profile = cloud
        else:
            cloud_profile = Profile.model_validate(cloud.profile())
        if isinstance(link, LinkEstimator):
            assert not isinstance(cloud, Profile)
            probe_link(cloud.probe, link)
            link = link.estimate().as_link()
        losses = codec_losses(losses_of) if losses_of is not None else {}
        if losses:
            log.info("measured codec losses (perplexity ratio - 1): %s", losses)
        return cls(edge, cloud_profile, link, losses, drafts)

    def on(self, link: Link) -> PlanInputs:
        """The same profiles and losses on another link (the estimate now)."""
        return dataclasses.replace(self, link=link)


def describe(result: SearchResult, link: Link, workload: Workload) -> str:
    """A person's summary: the chosen plan, its predicted figures, and the alternatives it beat."""
    def line(name: str, ch: Choice) -> str:
        e = ch.estimate
        flag = "" if ch.feasible else "  (not allowed by the constraints)"
        return (f"  {name:16} {ch.describe():60} total {e.total_ms:9.1f} ms  first token "
                f"{e.time_to_first_token_ms:8.1f} ms  per token {e.time_per_output_token_ms:7.2f} ms  "
                f"device {e.edge_memory_bytes / MIB:7.1f} MiB  {e.bytes_per_token:6.0f} B/token{flag}")
    best = result.best
    lines = [f"link {link.bandwidth_bps / 1e6:.1f} Mbit/s, rtt {link.rtt_ms:.2f} ms; workload {workload.prompt_tokens} "
             f"prompt + {workload.output_tokens} output tokens",
             f"search: {result.trials} trials, {result.evaluated_plans} distinct plans, {result.search_s:.2f} s",
             line("chosen", best)]
    for name, alt in result.baselines.items():
        ratio = alt.estimate.total_ms / best.estimate.total_ms
        lines.append(line(name, alt) + f"  ({ratio:.2f}x the chosen plan's time)")
    return "\n".join(lines)


def plan_for(inputs: PlanInputs, workload: Workload, constraints: Constraints, seed: int = 0,
             trials: int = 150) -> SearchResult:
    """Search with the measured codec losses, after checking both profiles describe the same model."""
    edge, cloud = inputs.edge, inputs.cloud
    if edge.fingerprint != cloud.fingerprint:
        raise PlanError(f"edge profile is of {edge.model_name!r}, cloud profile of {cloud.model_name!r}: "
                        "profile one model")
    if inputs.codec_loss:
        constraints = constraints.model_copy(update={"codec_loss": inputs.codec_loss})
    result = search(edge, cloud, inputs.link, workload, constraints, n_trials=trials, seed=seed, drafts=inputs.drafts)
    log.info("chose %s (predicted %.1f ms per request)", result.best.describe(), result.best.estimate.total_ms)
    return result
