"""The scheduler: when agents sleep, and making sure each sleeps in one place at a time (issue #12).

* :mod:`.leases`: one lease row per agent (owner, fencing token, expiry by the database's clock);
* :mod:`.requests`: ``sleep_requests`` rows, from schedules, triggers and people, coalesced into runs;
* :mod:`.schedules`: the ``schedules`` table (cron, interval, new episodes, documents) and firing;
* :mod:`.triggers`: APScheduler timers for cron/interval, polled triggers for new material;
* :mod:`.worker`: one agent served once: lease, requests, ``run_cycle`` (or a resume), record;
* :mod:`.service`: the long-running process (``agent-sleep scheduler``); :mod:`.config`: its YAML file.

Layer: orchestration, beside :mod:`agent_sleep.consolidation`, whose ``run_cycle`` it drives.
"""
