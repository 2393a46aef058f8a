"""`clm plan`: the evictor-planner's current plan — the last DrainPlanned it published."""

from __future__ import annotations

from nats.js.errors import NotFoundError

from clm.contracts import DrainPlanned, decode, streams, subjects
from tools.console.nats_connect import connect


async def latest_plan(url: str) -> DrainPlanned | None:
    nc = await connect(url)
    try:
        try:
            msg = await nc.jetstream().get_last_msg(streams.EVENTS.name, subjects.PLANNER_PLAN)
        except NotFoundError:
            return None
        return decode(msg.data or b"", DrainPlanned)
    finally:
        await nc.close()


def render(plan: DrainPlanned) -> str:
    mode = f"{plan.mode} mode" + (", dry run" if plan.dry_run else "")
    lines = [
        f"plan of {plan.occurred_at:%Y-%m-%d %H:%M:%S} UTC ({mode}):"
        f" {plan.nodes} nodes, {plan.pods} pods, cycle {plan.cycle_seconds:.2f} s",
        f"nodes draining: {', '.join(plan.nodes_draining) or 'none'}",
        f"nodes reclaimed (spot): {', '.join(plan.nodes_reclaimed) or 'none'}",
        f"the bin-packing plan would drain {plan.nodes_the_plan_would_drain} node(s);"
        f" migrations in flight {plan.migrations_in_flight}, deferred {plan.migrations_deferred}"
        + ("; PAUSED after recent failures" if plan.paused else ""),
    ]
    for drain in plan.new_drains:
        lines.append(f"drain {drain.node} ({drain.why}, saves {drain.saving_per_hour:.3f}/h):")
        for m in drain.moves:
            where = f" -> {m.destination}" if m.destination else ""
            lines.append(f"  {m.action:12} {m.namespace}/{m.pod}{where}  ({m.why})")
    if not plan.new_drains:
        lines.append("no new drains this cycle")
    return "\n".join(lines)
