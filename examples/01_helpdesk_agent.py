"""A helpdesk agent on the local default model that logs its experiences.

To run:  python examples/01_helpdesk_agent.py        (then: agent-sleep episodes list)

A LangGraph graph with one tool (order lookup). The tool is routed by a small
rule, because a 135M-parameter model cannot be trusted to call tools; the
model then answers from the tool's result. One line wires capture in: the
``SleepCallbackHandler`` in the run config. After each answer an automatic
check records feedback, the way a real deployment would record a user's
thumbs-up or a resolved ticket.
"""

from __future__ import annotations

import re
import sys
import uuid
from typing import Any

from langchain_core.messages import AIMessage, SystemMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode

from agent_sleep import ChatLocalModel, ExperienceStore, SleepCallbackHandler

ORDERS = {
    "A1001": "shipped on 25 November, arriving 29 November",
    "B2002": "delayed: waiting for stock, new date 3 December",
    "C3003": "delivered on 20 November",
}
ORDER_ID = re.compile(r"\b([A-Z]\d{4})\b")
QUESTIONS = [
    "Hi, where is my order A1001?",
    "Order B2002 has not arrived. What is going on?",
    "Can you check the status of C3003 please?",
]


@tool
def lookup_order(order_id: str) -> str:
    """Look up the shipping status of an order by its id (like A1001)."""
    status = ORDERS.get(order_id.upper())
    return f"Order {order_id}: {status}." if status else f"Order {order_id}: not found."


def build_agent(model: Any) -> Any:
    """The helpdesk graph: route -> (tool) -> answer."""

    def route(state: MessagesState) -> dict[str, Any]:
        match = ORDER_ID.search(str(state["messages"][-1].content))
        if not match:
            return {}
        call = {"name": "lookup_order", "args": {"order_id": match.group(1)}, "id": f"call_{uuid.uuid4().hex[:8]}"}
        return {"messages": [AIMessage("", tool_calls=[call])]}

    def answer(state: MessagesState) -> dict[str, Any]:
        system = SystemMessage("You are a helpful helpdesk assistant. Answer in one or two short sentences "
                               "using the order information you were given.")
        return {"messages": [model.invoke([system, *state["messages"]])]}

    def after_route(state: MessagesState) -> str:
        return "tools" if getattr(state["messages"][-1], "tool_calls", None) else "answer"

    graph = StateGraph(MessagesState)
    graph.add_node("route", route)
    graph.add_node("tools", ToolNode([lookup_order]))
    graph.add_node("answer", answer)
    graph.add_edge(START, "route")
    graph.add_conditional_edges("route", after_route, ["tools", "answer"])
    graph.add_edge("tools", "answer")
    graph.add_edge("answer", END)
    return graph.compile(checkpointer=InMemorySaver())


def main(model: Any = None, store: ExperienceStore | None = None, questions: list[str] | None = None) -> list[str]:
    """Run the agent over the sample questions; returns the episode ids it logged."""
    store = store or ExperienceStore()
    model = model or ChatLocalModel(max_new_tokens=48)
    agent = build_agent(model)
    capture = SleepCallbackHandler("helpdesk", url=store.url, settings=store.settings)
    episodes = []
    for i, question in enumerate(questions or QUESTIONS):
        run_id = uuid.uuid4()  # the episode id; kept to attach feedback below
        config = {"callbacks": [capture], "run_id": run_id, "configurable": {"thread_id": f"customer-{i}"}}
        result = agent.invoke({"messages": [("user", question)]}, config=config)
        reply = str(result["messages"][-1].content)
        print(f"user:  {question}\nagent: {reply}\n")
        episodes.append(capture.episode_id_for(run_id))
        capture.flush()
        # Automatic feedback: did the answer mention the looked-up status?
        order = ORDER_ID.search(question)
        expected = ORDERS.get(order.group(1), "") if order else ""
        key_words = [w for w in re.findall(r"[a-z]{5,}", expected.lower())]
        hit = any(w in reply.lower() for w in key_words)
        store.add_feedback(episodes[-1], score=1.0 if hit else 0.0, label="grounded" if hit else "ungrounded",
                           source="automatic")
        store.record_outcome(episodes[-1], "resolved" if hit else "needs_review")
    print(f"logged {len(episodes)} episodes to {store.safe_url}")
    return episodes


if __name__ == "__main__":
    main()
    sys.exit(0)
