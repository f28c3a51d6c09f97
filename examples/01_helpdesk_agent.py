"""A helpdesk agent on the local default model that logs its experiences.

To run:  python examples/01_helpdesk_agent.py        (then: agent-sleep episodes list)

The agent is the one ``agent-sleep demo`` runs (``agent_sleep/demo/helpdesk.py``):
a LangGraph graph with one order-lookup tool, routed by a rule because a
135M-parameter model cannot be trusted to call tools; the model writes the
answers. This file shows what your own agent needs to log experiences: one
``SleepCallbackHandler`` in the run config, and feedback recorded after each
answer (here an automatic check, in a deployment a thumbs-up or a closed ticket).
"""

from __future__ import annotations

import uuid
from typing import Any

from agent_sleep import ChatLocalModel, ExperienceStore, SleepCallbackHandler
from agent_sleep.demo.helpdesk import QUESTIONS, build_agent, grounded


def main(model: Any = None, store: ExperienceStore | None = None, questions: list[str] | None = None) -> list[str]:
    """Run the agent over the sample questions; returns the episode ids it logged."""
    store = store or ExperienceStore()
    agent = build_agent(model or ChatLocalModel(max_new_tokens=48))
    capture = SleepCallbackHandler("helpdesk", url=store.url, settings=store.settings)
    episodes = []
    for i, question in enumerate(questions or QUESTIONS):
        run_id = uuid.uuid4()  # the episode id; kept to attach feedback below
        config = {"callbacks": [capture], "run_id": run_id, "configurable": {"thread_id": f"customer-{i}"}}
        reply = agent.invoke({"messages": [("user", question)]}, config=config)["messages"][-1]
        print(f"user:  {question}\nagent: {reply.content}\n")
        episodes.append(capture.episode_id_for(run_id))
        capture.flush()
        ok = grounded(question, reply)  # did the answer use the looked-up order status?
        store.add_feedback(episodes[-1], score=1.0 if ok else 0.0, label="grounded" if ok else "ungrounded",
                           source="automatic")
        store.record_outcome(episodes[-1], "resolved" if ok else "needs_review")
    print(f"logged {len(episodes)} episodes to {store.safe_url}")
    return episodes


if __name__ == "__main__":
    main()
