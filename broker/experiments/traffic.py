"""What an ingress holds of the experiments: their shares (canary states followed from
NATS), the split of each request, its counters, and a canary judge."""

from __future__ import annotations

import logging
import time

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from broker.experiments import canary, split, stats
from broker.nats.kvwatch import KVFollower
from broker.nats.provision import ensure_bucket
from broker.nats.subjects import EXPERIMENTS, Subjects
from broker.tenancy.usage import NANO, UsageRecorder
from schemas.config import Config, ExperimentConfig
from schemas.experiments import CanaryState, ExperimentView, canary_decoder

log = logging.getLogger(__name__)


class Experiments:
    def __init__(
        self, config: Config, js: JetStreamContext, kv: KeyValue, recorder: UsageRecorder
    ) -> None:
        self.config = config
        self._js, self._kv = js, kv
        self._subjects = Subjects.of(config)
        self._by_alias = {e.model: e for e in config.experiments}
        self._states: dict[str, CanaryState] = {}
        self._shares = {e.name: split.shares(e, None) for e in config.experiments}
        self._recorder = recorder
        self.stats = stats.VariantStats(recorder, self._subjects)
        self._follower = KVFollower(kv, self._apply)
        self.judge = canary.CanaryJudge(js, kv, config)
        self._prices = {
            d.name: (d.input_cost_per_mtok or 0.0, d.output_cost_per_mtok or 0.0)
            for m in config.model_list
            for d in m.deployments
        }

    @classmethod
    async def open(cls, nc: NATS, config: Config, recorder: UsageRecorder) -> Experiments | None:
        """None without experiments in the config: the request path then pays nothing.
        ``recorder``: the ingress's, started and stopped by it."""
        if not config.experiments:
            return None
        js = nc.jetstream()
        kv = await ensure_bucket(js, config, EXPERIMENTS)
        found = cls(config, js, kv, recorder)
        await found._follower.start()
        found.judge.start()
        return found

    async def close(self) -> None:
        await self.judge.stop()
        await self._follower.stop()

    def _apply(self, key: str, value: bytes | None, revision: int | None) -> None:
        experiment = next((e for e in self.config.experiments if e.name == key), None)
        if experiment is None:
            return  # the judge's lease, or an experiment no longer configured
        state = None
        if value:
            try:
                state = canary_decoder.decode(value)
            except Exception:
                log.warning("experiment %s: unreadable state ignored", key)
                return
            self._states[key] = state
        else:
            self._states.pop(key, None)
        self._shares[key] = split.shares(experiment, state)

    def experiment(self, alias: str) -> ExperimentConfig | None:
        return self._by_alias.get(alias)

    def route(self, experiment: ExperimentConfig, sticky_id: str | None) -> str:
        """The variant serving this request."""
        return split.pick(experiment, self._shares[experiment.name], sticky_id)

    def shares(self, name: str) -> dict[str, int]:
        return dict(self._shares[name])

    def canary_state(self, name: str) -> CanaryState | None:
        return self._states.get(name)

    def observe(
        self,
        experiment: str,
        variant: str,
        status: int,
        latency_s: float,
        deployment: str | None,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None:
        price_in, price_out = self._prices.get(deployment or "", (0.0, 0.0))
        cost = round((prompt_tokens * price_in + completion_tokens * price_out) * NANO / 1e6)
        self.stats.observe(
            experiment, variant, status, latency_s, prompt_tokens, completion_tokens, cost
        )

    async def view(self, experiment: ExperimentConfig, since: float | None) -> ExperimentView:
        """Its shares, canary state and every variant's report from ``since`` on."""
        await self._recorder.flush()  # this ingress's latest counts too
        reports = await stats.read(
            self._js, self._subjects, experiment.name, list(experiment.variants), since
        )
        return ExperimentView(
            name=experiment.name,
            model=experiment.model,
            sticky=experiment.sticky,
            shares=self.shares(experiment.name),
            canary=self._states.get(experiment.name),
            report=list(reports.values()),
        )

    async def roll_back(self, experiment: ExperimentConfig, reason: str) -> CanaryState:
        state = await canary.roll_back(self._kv, experiment, reason)
        self._states[experiment.name] = state
        self._shares[experiment.name] = split.shares(experiment, state)
        return state


def report_since(hours: float | None) -> float | None:
    return time.time() - hours * 3600 if hours else None
